"""Tests for hpc_ppo/bundle/__init__.py: the output folder rule, the lock's header, and the
warning for a CPU bundle that got torch's CUDA build.

Run: python -m pytest tests/bundle/test_bundle.py -q
"""

from __future__ import annotations

from pathlib import Path

import pytest
from packaging.requirements import Requirement

from hpc_ppo.bundle import _lock_header, _warnings, check_output_folder
from hpc_ppo.bundle.resolve import Pin
from hpc_ppo.bundle.target import make_target
from hpc_ppo.errors import ConfigError
from hpc_ppo.provenance import code_version


def test_a_cpu_bundle_with_torchs_cuda_build_warns_with_the_fix():
    pins = {"torch": Pin("torch", "2.13.0"), "nvidia-cublas": Pin("nvidia-cublas", "13.1")}
    (warning,) = _warnings(pins, [])
    assert warning.startswith("torch 2.13.0 is a CUDA build (1 nvidia-* wheels in the bundle)")
    assert "PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu" in warning
    assert _warnings(pins, ["gpu"]) == []
    assert _warnings({"torch": Pin("torch", "2.13.0+cpu")}, []) == []


def test_the_lock_header_holds_the_lines_install_sh_reads():
    target = make_target("3.12", "manylinux_2_39_x86_64")
    skip = [Requirement("torch==2.11.0")]
    header = _lock_header("hpc-ppo bundle ...", target, ["gpu"], Path("/c.txt"), skip)
    assert "python: 3.12" in header and "skipped: torch==2.11.0" in header
    assert "target: Python 3.12 (cp312) on manylinux_2_39_x86_64" in header
    assert f"hpc-ppo: {code_version()}" in header  # which commit the bundled wheel was built from


def test_the_output_folder_is_new_or_empty(tmp_path):
    check_output_folder(tmp_path / "new")
    check_output_folder(tmp_path)  # empty
    (tmp_path / "f").write_text("")
    with pytest.raises(ConfigError, match="exists and is not an empty folder"):
        check_output_folder(tmp_path)
    with pytest.raises(ConfigError, match="exists and is not an empty folder"):
        check_output_folder(tmp_path / "f")
