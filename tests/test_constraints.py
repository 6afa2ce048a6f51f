"""Tests for hpc_ppo/constraints/: the pins `hpc-ppo bundle` resolves with by default agree
with the package's own requirements (setup.cfg), one exact pin per package.

Run: python -m pytest tests/test_constraints.py -q
"""

from __future__ import annotations

import configparser
from pathlib import Path

import pytest
from helpers import REPO
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from hpc_ppo.bundle import CPU_CONSTRAINTS, GPU_CONSTRAINTS, default_constraints


def pins(path: Path) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            req = Requirement(line)
            (spec,) = req.specifier
            assert spec.operator == "==" and not req.marker and not req.extras, line
            name = canonicalize_name(req.name)
            assert name not in out, f"{path.name}: {name} pinned twice"
            out[name] = spec.version
    return out


def requirements(section: str, key: str) -> dict[str, Requirement]:
    cfg = configparser.ConfigParser()
    cfg.read(REPO / "setup.cfg")
    lines = [ln.strip() for ln in cfg[section][key].splitlines() if ln.strip()]
    return {canonicalize_name(Requirement(ln).name): Requirement(ln) for ln in lines}


def test_the_gpu_extra_takes_the_gpu_pins_and_the_rest_the_cpu_torch():
    assert default_constraints(["gpu", "math"]) == GPU_CONSTRAINTS
    assert default_constraints([]) == default_constraints(["math"]) == CPU_CONSTRAINTS


@pytest.mark.parametrize("path", [GPU_CONSTRAINTS, CPU_CONSTRAINTS], ids=lambda p: p.name)
def test_the_pins_fit_the_packages_own_requirements(path):
    got = pins(path)
    wanted = requirements("options", "install_requires")
    wanted |= requirements("options.extras_require", "gpu") if path == GPU_CONSTRAINTS else {}
    for name, req in wanted.items():
        if name in got:
            assert req.specifier.contains(got[name]), f"{path.name}: {name}=={got[name]} vs {req}"
    assert "torch" in got


def test_the_gpu_pins_are_vllm_0_26_with_torch_2_11():
    got = pins(GPU_CONSTRAINTS)
    assert got["vllm"] == "0.26.0" and got["torch"] == "2.11.0"
    assert "nvidia-cudnn-frontend" not in got  # see the file: conflicts with vllm's cutlass pin
