"""`hpc-ppo render-sbatch` / `prepare` and sbatch/ppo-multinode.sbatch without a cluster: the
#SBATCH lines, and that no config value can run as shell code. Scripts are executed for real
under bash with `python` and `srun` replaced by recorders (the boundary).

Run: python -m pytest tests/launch/test_sbatch.py -q
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import CONFIGS, REPO, TINY

from hpc_ppo.cli import main
from hpc_ppo.config import load_config, validate
from hpc_ppo.launch.sbatch import allocation_errors, render_sbatch

QWEN7B = str(CONFIGS / "qwen2-7b.yaml")
TEMPLATE = REPO / "sbatch" / "ppo-multinode.sbatch"

# What srun runs in front of the rank where coreutils' env can block signals (hpc_ppo.preempt).
HOLD = ["env", "--block-signal=USR2,TERM,INT"]

RECORDER = """import json, sys
with open(sys.argv[1], "a") as f:
    f.write(json.dumps(sys.argv[2:]) + "\\n")
"""


@pytest.fixture
def sandbox(tmp_path):
    """A folder with recording `python` and `srun`; returns (dir, bin, calls())."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    record = tmp_path / "calls.jsonl"
    (tmp_path / "recorder.py").write_text(RECORDER)
    for name in ("python", "srun"):
        tool = bin_dir / name
        tool.write_text(
            f'#!/bin/sh\nexec {shlex.quote(sys.executable)} {tmp_path}/recorder.py {record} {name} "$@"\n'
        )
        tool.chmod(0o755)

    def calls() -> list[list[str]]:
        return [json.loads(line) for line in record.read_text().splitlines()]

    return tmp_path, bin_dir, calls


def run_script(script: Path, cwd: Path, bin_dir: Path, *args: str) -> subprocess.CompletedProcess:
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "SLURM_JOB_ID": "123", "HOME": str(cwd)}
    return subprocess.run(
        ["bash", str(script), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=30
    )


def sbatch_options(text: str) -> dict[str, str | bool]:
    """The #SBATCH options as sbatch reads them (it strips shell-style quotes)."""
    out: dict[str, str | bool] = {}
    for line in text.splitlines():
        if line.startswith("#SBATCH "):
            (token,) = shlex.split(line.removeprefix("#SBATCH "))  # exactly one argument
            name, eq, value = token.removeprefix("--").partition("=")
            out[name] = value if eq else True
    return out


# ---------------------------------------------------------------- rendering


def test_render_for_eight_gpus_per_node():
    cfg = load_config(
        QWEN7B,
        ["slurm.nodes=2", "slurm.partition=gpu", "slurm.setup=[module load cuda/12.8]"],
        check_paths=False,
    )
    text = render_sbatch(cfg, QWEN7B, ["slurm.nodes=2"], python="/venv/bin/python")
    opts = sbatch_options(text)
    assert opts == {
        "job-name": "qwen2-7b",
        "nodes": "2",
        "ntasks-per-node": "8",
        "gpus-per-node": "8",
        "cpus-per-task": "8",
        "time": "24:00:00",
        "partition": "gpu",
        "exclusive": True,
        "signal": "USR2@600",
        "requeue": True,
        "open-mode": "append",
        "output": "runs/qwen2-7b-%j.out",
    }
    lines = text.splitlines()
    assert "module load cuda/12.8" in lines
    assert lines.index("module load cuda/12.8") < lines.index("set -euo pipefail")
    assert (
        'srun --kill-on-bad-exit=1 $HPC_PPO_HOLD "$PYTHON" -u -m hpc_ppo.rank "$RUN_DIR"' in lines
    )
    assert '"$PYTHON" -m hpc_ppo.cli prepare "$CONFIG" slurm.nodes=2 --run-dir "$RUN_DIR"' in lines
    # every #SBATCH line precedes the first command (sbatch stops reading at it)
    first_command = next(i for i, x in enumerate(lines) if x and not x.startswith("#"))
    assert max(i for i, x in enumerate(lines) if x.startswith("#SBATCH")) < first_command
    subprocess.run(["bash", "-n"], input=text, text=True, check=True)


def test_render_one_gpu_per_task_and_no_requeue():
    cfg = load_config(QWEN7B, ["slurm.gpu_binding=task", "slurm.requeue=false"], check_paths=False)
    opts = sbatch_options(render_sbatch(cfg, QWEN7B, []))
    assert opts["gpus-per-task"] == "1" and "gpus-per-node" not in opts
    assert opts["no-requeue"] is True and "requeue" not in opts


def test_cli_render_sbatch_to_a_file(tmp_path, capsys):
    out = tmp_path / "job.sbatch"
    code = main(["render-sbatch", QWEN7B, f"trainer.output_dir={tmp_path}", "-o", str(out)])
    assert code == 0
    assert "warning: model.path=/path/to/Qwen2-7B-Instruct" in capsys.readouterr().err
    assert os.access(out, os.X_OK)
    assert sbatch_options(out.read_text())["output"] == f"{tmp_path}/qwen2-7b-%j.out"


# ---------------------------------------------------------------- quoting


HOSTILE = [
    "tracking.experiment=x $(touch pwned1) `touch pwned2`; touch pwned3\n touch pwned4 #",
    "trainer.run_name=r;$(touch pwned5)'q'",
    'slurm.job_name="`touch pwned6` && touch pwned7"',
    'slurm.extra_sbatch=["--comment=$(touch pwned8)"]',
    "slurm.constraint=a|b&touch pwned9",
]


def test_no_config_value_runs_as_shell_code(sandbox):
    tmp, bin_dir, calls = sandbox
    out_dir = f"{tmp}/out dir $(touch pwned10)"
    overrides = [*HOSTILE, f"trainer.output_dir={out_dir}"]
    cfg = load_config(TINY, overrides)
    assert cfg.tracking.experiment.startswith("x $(touch pwned1)")
    script = tmp / "job.sbatch"
    script.write_text(render_sbatch(cfg, TINY, overrides, python=str(bin_dir / "python")))

    subprocess.run(["bash", "-n", str(script)], check=True)
    proc = run_script(script, tmp, bin_dir)
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in tmp.rglob("pwned*")) == []
    run_dir = f"{out_dir}/r;$(touch pwned5)'q'-123"
    assert calls() == [
        # the overrides arrive byte for byte, newline included
        ["python", "-m", "hpc_ppo.cli", "prepare", TINY, *overrides, "--run-dir", run_dir],
        [
            "srun",
            "--kill-on-bad-exit=1",
            *HOLD,
            str(bin_dir / "python"),
            "-u",
            "-m",
            "hpc_ppo.rank",
            run_dir,
        ],
    ]
    opts = sbatch_options(script.read_text())
    assert opts["job-name"] == "`touch pwned6` && touch pwned7"
    assert opts["comment"] == "$(touch pwned8)"
    assert opts["constraint"] == "a|b&touch pwned9"
    assert opts["output"] == f"{out_dir}/r;$(touch pwned5)'q'-%j.out"


@pytest.mark.parametrize(
    "override",
    [
        'slurm.job_name="a\\n#SBATCH --partition=x"',
        'slurm.extra_sbatch=["--comment=a\\ntouch pwned"]',
        'trainer.output_dir="/tmp/a\\rb"',
    ],
)
def test_newlines_cannot_reach_an_sbatch_line(override, capsys):
    assert main(["render-sbatch", TINY, override]) == 2
    err = capsys.readouterr().err
    key = override.split("=")[0]
    assert f"{key}" in err and "must be one line (it goes into an #SBATCH line)" in err


def test_a_newline_in_the_run_name_is_refused(capsys):
    """The run name is the run folder's name, so the run_name rule reports it."""
    assert main(["render-sbatch", TINY, 'trainer.run_name="a\\nb"']) == 2
    err = capsys.readouterr().err
    assert "trainer.run_name='a\\nb': contains a control character" in err


# ---------------------------------------------------------------- prepare


def test_prepare_creates_then_resumes_then_refuses_another_config(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SLURM_JOB_ID", "555")
    monkeypatch.delenv("SLURM_NTASKS", raising=False)
    run_dir = tmp_path / "out" / "tiny-555"
    args = ["prepare", TINY, "trainer.total_steps=3", "--run-dir", str(run_dir)]
    assert main(args) == 0
    assert capsys.readouterr().out.splitlines() == [
        f"hpc-ppo: created {run_dir}",
        f"run_dir: {run_dir}",
    ]
    assert load_config(run_dir / "config.yaml").trainer.total_steps == 3
    assert (run_dir / "slurm" / "job_id").read_text() == "555\n"
    assert (tmp_path / "out" / ".jobs" / "555").read_text() == f"{run_dir}\n"
    (run_dir / "metrics.jsonl").write_text("")  # the job ran a while, then was requeued
    assert main(args) == 0
    assert f"hpc-ppo: resuming in {run_dir}" in capsys.readouterr().out
    assert main(["prepare", TINY, "trainer.total_steps=4", "--run-dir", str(run_dir)]) == 2
    err = capsys.readouterr().err
    assert "already holds a run with another config (trainer.total_steps: 3 -> 4)" in err
    assert load_config(run_dir / "config.yaml").trainer.total_steps == 3


def test_prepare_refuses_a_folder_that_is_not_a_run(tmp_path, capsys):
    (tmp_path / "stuff").write_text("x")
    assert main(["prepare", TINY, "--run-dir", str(tmp_path)]) == 2
    assert "is not a run folder" in capsys.readouterr().err


def test_prepare_checks_the_tasks_slurm_really_gave(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SLURM_NTASKS", "3")  # `sbatch -n 3 job.sbatch` overrode slurm.*
    assert main(["prepare", TINY, "--run-dir", str(tmp_path / "r")]) == 2
    assert "multiple of the job's 3 tasks (SLURM_NTASKS" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()
    cfg = load_config(TINY)
    assert allocation_errors(cfg, {"SLURM_NTASKS": "4"}) == []
    assert allocation_errors(cfg, {}) == []


def test_slurm_rules_apply_to_the_slurm_world_only():
    cfg = load_config(TINY, ["slurm.nodes=3"], launcher="local")  # `hpc-ppo run` (1 rank) is fine
    assert any("Slurm world size 3" in e for e in validate(cfg, launcher="slurm"))


# ---------------------------------------------------------------- hand-written template


def test_multinode_template_runs_prepare_then_srun(sandbox):
    tmp, bin_dir, calls = sandbox
    text = TEMPLATE.read_text()
    opts = sbatch_options(text)
    assert opts["signal"] == "USR2@600" and opts["requeue"] is True
    assert opts["open-mode"] == "append" and opts["gpus-per-node"] == opts["ntasks-per-node"]
    subprocess.run(["bash", "-n", str(TEMPLATE)], check=True)
    proc = run_script(TEMPLATE, tmp, bin_dir, TINY, "trainer.total_steps=3", "x=$(touch pwned)")
    assert proc.returncode == 0, proc.stderr
    assert not (tmp / "pwned").exists()
    assert calls() == [
        [
            "python",
            "-m",
            "hpc_ppo.cli",
            "prepare",
            TINY,
            "trainer.total_steps=3",
            "x=$(touch pwned)",
            "--run-dir",
            "runs/tiny-cpu-123",
        ],
        [
            "srun",
            "--kill-on-bad-exit=1",
            *HOLD,
            "python",
            "-u",
            "-m",
            "hpc_ppo.rank",
            "runs/tiny-cpu-123",
        ],
    ]
    assert run_script(TEMPLATE, tmp, bin_dir).returncode == 2  # no config given
