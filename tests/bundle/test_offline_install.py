"""CI acceptance of `hpc-ppo bundle` (issue #15): the CPU install set for this machine's own
Python and platform, installed by the bundle's install.sh into a fresh venv with no package
index and none of this machine's pip configuration, trains 2 steps of the CPU demo from a
folder outside the checkout (so the venv's hpc-ppo runs, not this source tree).

Run: python -m pytest tests/bundle/test_offline_install.py -q     (about 2 minutes)
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from helpers import TINY, cli, local_env, metrics


@pytest.mark.slow
def test_cpu_bundle_installs_offline_in_a_fresh_venv_and_trains(tmp_path):
    bundle = tmp_path / "bundle"
    made = cli("bundle", "-o", str(bundle), timeout=1200)
    assert made.returncode == 0, made.stderr[-4000:]
    assert made.stdout.splitlines()[-1] == f"bundle: {bundle}"
    pins = [ln for ln in (bundle / "lock.txt").read_text().splitlines() if ln[:1] != "#"]
    assert any(p.startswith("hpc-ppo==") for p in pins)
    assert [p for p in pins if p.startswith("torch==")] == ["torch==2.13.0+cpu"], pins
    assert not [p for p in pins if p.startswith("nvidia-")]  # the CPU build, no CUDA wheels
    assert len(list((bundle / "wheels").iterdir())) == len(pins)

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    python = str(venv / "bin" / "python")
    # The node: no PYTHONPATH to this checkout, and pip's configured links, extra indexes and
    # constraints of this machine emptied (install.sh itself passes --no-index).
    node = {k: v for k, v in local_env().items() if k != "PYTHONPATH"}
    node |= {"PIP_FIND_LINKS": "", "PIP_EXTRA_INDEX_URL": "", "PIP_CONSTRAINT": ""}
    work = tmp_path / "work"
    work.mkdir()

    def on_node(*cmd: str, **env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            cmd, cwd=work, env=node | env, capture_output=True, text=True, timeout=900
        )

    installed = on_node(str(bundle / "install.sh"), "--no-compile", PYTHON=python)
    assert installed.returncode == 0, installed.stdout[-3000:] + installed.stderr[-3000:]
    where = on_node(python, "-c", "import hpc_ppo; print(hpc_ppo.__file__)")
    assert Path(where.stdout.strip()).is_relative_to(venv), where

    run = on_node(
        str(venv / "bin" / "hpc-ppo"),
        "run",
        TINY,
        "trainer.total_steps=2",
        f"trainer.output_dir={tmp_path / 'runs'}",
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    run_dir = Path(run.stdout.strip().splitlines()[-1].removeprefix("run_dir: "))
    assert [m["step"] for m in metrics(run_dir)] == [0, 1]
