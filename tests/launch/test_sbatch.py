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
from helpers import CONFIGS, REPO, TINY, sbatch_options, write_executable

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


# ---------------------------------------------------------------- rendering


def test_render_for_eight_gpus_per_node():
    cfg = load_config(
        QWEN7B,
        ["slurm.nodes=2", "slurm.partition=gpu", "slurm.setup=[module load cuda/12.8]"],
        check_paths=False,
    )
    run_dir = Path("/runs/qwen2-7b-20261130-101500")
    text = render_sbatch(cfg, run_dir, "hpc-ppo render-sbatch x.yaml", python="/venv/bin/python")
    opts = sbatch_options(text)
    assert opts == {
        "job-name": "qwen2-7b-20261130-101500",
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
        "output": f"{run_dir}/slurm/%j_0_log.out",
    }
    lines = text.splitlines()
    assert "module load cuda/12.8" in lines
    assert lines.index("module load cuda/12.8") < lines.index("set -euo pipefail")
    assert f"RUN_DIR={run_dir}" in lines
    assert (
        'srun --unbuffered --open-mode=append --output="$RUN_DIR"/slurm/%j_%t_log.out'
        ' --kill-on-bad-exit=1 $HPC_PPO_HOLD "$PYTHON" -u -m hpc_ppo.rank "$RUN_DIR"' in lines
    )
    # the job runs the run folder's snapshot; the YAML it came from is not named anywhere
    assert '"$PYTHON" -m hpc_ppo.cli prepare "$RUN_DIR"' in lines
    assert "CONFIG=" not in text
    # every #SBATCH line precedes the first command (sbatch stops reading at it)
    first_command = next(i for i, x in enumerate(lines) if x and not x.startswith("#"))
    assert max(i for i, x in enumerate(lines) if x.startswith("#SBATCH")) < first_command
    subprocess.run(["bash", "-n"], input=text, text=True, check=True)


def test_render_one_gpu_per_task_and_no_requeue():
    cfg = load_config(QWEN7B, ["slurm.gpu_binding=task", "slurm.requeue=false"], check_paths=False)
    opts = sbatch_options(render_sbatch(cfg, Path("/r"), "hpc-ppo render-sbatch x.yaml"))
    assert opts["gpus-per-task"] == "1" and "gpus-per-node" not in opts
    assert opts["no-requeue"] is True and "requeue" not in opts


def test_cli_render_sbatch_creates_the_run_folder_with_the_snapshot(tmp_path, capsys):
    """The same run folder as `submit`: named by time, config.yaml written now, logs inside."""
    out = tmp_path / "job.sbatch"
    code = main(["render-sbatch", QWEN7B, f"trainer.output_dir={tmp_path}/o", "-o", str(out)])
    assert code == 0
    stdout, err = capsys.readouterr()
    assert "warning: model.path=/path/to/Qwen2-7B-Instruct" in err
    run_dir = Path(stdout.splitlines()[-1].removeprefix("run_dir: "))
    assert run_dir.parent == tmp_path / "o" and run_dir.name.startswith("qwen2-7b-20")
    assert load_config(run_dir / "config.yaml", check_paths=False).trainer.output_dir == str(
        tmp_path / "o"
    )
    assert os.access(out, os.X_OK)
    assert (run_dir / "slurm" / "job.sbatch").read_text() == out.read_text()
    assert sbatch_options(out.read_text())["output"] == f"{run_dir}/slurm/%j_0_log.out"
    assert f"hpc-ppo render-sbatch {QWEN7B} trainer.output_dir={tmp_path}/o" in out.read_text()


def test_cli_render_sbatch_refuses_an_existing_run_name(tmp_path, capsys):
    args = ["render-sbatch", TINY, f"trainer.output_dir={tmp_path}", "trainer.run_name=r"]
    assert main(args) == 0
    capsys.readouterr()
    assert main(args) == 2
    assert f"run folder {tmp_path / 'r'} already exists" in capsys.readouterr().err


def test_the_job_runs_the_snapshot_not_the_edited_yaml(tmp_path, monkeypatch, capsys):
    """Issue 10: a YAML edited after render-sbatch (before the job starts, or before a requeue)
    changes nothing; the batch step reads RUN_DIR/config.yaml only."""
    config = tmp_path / "exp.yaml"
    config.write_text(Path(TINY).read_text())
    assert main(["render-sbatch", str(config), f"trainer.output_dir={tmp_path}", "-o", "-"]) == 0
    run_dir = Path(capsys.readouterr().err.split("run_dir: ")[1].split(" ")[0])
    config.write_text(Path(TINY).read_text().replace("total_steps: 50", "total_steps: 7"))
    monkeypatch.setenv("SLURM_JOB_ID", "77")
    monkeypatch.delenv("SLURM_NTASKS", raising=False)
    for _start in range(2):  # first start, then a requeue
        assert main(["prepare", str(run_dir)]) == 0, capsys.readouterr().err
        assert load_config(run_dir / "config.yaml").trainer.total_steps == 50
    assert capsys.readouterr().out.splitlines()[-2:] == [
        f"hpc-ppo: starting in {run_dir}",
        f"run_dir: {run_dir}",
    ]
    assert (run_dir / "slurm" / "job_id").read_text() == "77\n"
    assert (tmp_path / ".jobs" / "77").read_text() == f"{run_dir}\n"


def test_prepare_of_a_run_folder_takes_no_overrides_and_needs_config_yaml(tmp_path, capsys):
    assert main(["prepare", str(tmp_path), "trainer.total_steps=3"]) == 2
    assert "cannot be overridden" in capsys.readouterr().err
    assert main(["prepare", str(tmp_path)]) == 2
    assert "not a run folder (no config.yaml)" in capsys.readouterr().err


def test_a_second_job_may_not_take_a_running_jobs_folder(tmp_path, monkeypatch, capsys):
    """The same script submitted twice: the second job stops before training while the first
    is queued or running (scontrol, the boundary, is faked); after it ended, it resumes."""
    assert main(["render-sbatch", TINY, f"trainer.output_dir={tmp_path}", "-o", "-"]) == 0
    run_dir = Path(capsys.readouterr().err.split("run_dir: ")[1].split(" ")[0])
    monkeypatch.delenv("SLURM_NTASKS", raising=False)
    monkeypatch.setenv("SLURM_JOB_ID", "10")
    assert main(["prepare", str(run_dir)]) == 0
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    state = tmp_path / "state"
    write_executable(bin_dir / "scontrol", f'#!/bin/sh\necho "JobId=10 JobState=$(cat {state})"\n')
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("SLURM_JOB_ID", "11")
    state.write_text("RUNNING")
    assert main(["prepare", str(run_dir)]) == 2
    assert "is the run folder of job 10, which is RUNNING" in capsys.readouterr().err
    assert (run_dir / "slurm" / "job_id").read_text() == "10\n"
    state.write_text("TIMEOUT")
    assert main(["prepare", str(run_dir)]) == 0
    assert (run_dir / "slurm" / "job_id").read_text() == "11\n"


# ---------------------------------------------------------------- quoting


HOSTILE = [
    "tracking.experiment=x $(touch pwned1) `touch pwned2`; touch pwned3\n touch pwned4 #",
    "trainer.run_name=r;$(touch pwned5)'q'",
    'slurm.job_name="`touch pwned6` && touch pwned7"',
    'slurm.extra_sbatch=["--comment=$(touch pwned8)"]',
    "slurm.constraint=a|b&touch pwned9",
]


def test_no_config_value_runs_as_shell_code(sandbox, capsys):
    tmp, bin_dir, calls = sandbox
    out_dir = f"{tmp}/out dir $(touch pwned10)"
    overrides = [*HOSTILE, f"trainer.output_dir={out_dir}"]
    assert main(["render-sbatch", TINY, *overrides, "-o", str(tmp / "job.sbatch")]) == 0
    run_dir = f"{out_dir}/r;$(touch pwned5)'q'"
    assert capsys.readouterr().out.splitlines()[-1] == f"run_dir: {run_dir}"
    cfg = load_config(f"{run_dir}/config.yaml")
    assert cfg.tracking.experiment.startswith("x $(touch pwned1)")
    script = tmp / "job.sbatch"
    text = render_sbatch(cfg, Path(run_dir), shlex.join(overrides), python=str(bin_dir / "python"))
    script.write_text(text)

    subprocess.run(["bash", "-n", str(script)], check=True)
    proc = run_script(script, tmp, bin_dir)
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in tmp.rglob("pwned*")) == []
    assert calls() == [
        ["python", "-m", "hpc_ppo.cli", "prepare", run_dir],
        [
            "srun",
            "--unbuffered",
            "--open-mode=append",
            f"--output={run_dir}/slurm/%j_%t_log.out",
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
    assert opts["output"] == f"{run_dir}/slurm/%j_0_log.out"


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


def test_prepare_creates_resumes_and_keeps_its_snapshot_after_an_edit(
    tmp_path, monkeypatch, capsys
):
    """The template's `prepare CONFIG --run-dir` reads the YAML at every start: after an edit a
    requeued job (same job id) keeps the config it started with; another job is refused."""
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
    edited = ["prepare", TINY, "trainer.total_steps=4", "--run-dir", str(run_dir)]
    assert main(edited) == 0  # the requeue after an edit: runs on, on its snapshot
    out, err = capsys.readouterr()
    assert f"hpc-ppo: resuming in {run_dir}" in out
    assert "differs from the one job 555 started with (trainer.total_steps: 3 -> 4)" in err
    assert load_config(run_dir / "config.yaml").trainer.total_steps == 3
    monkeypatch.setenv("SLURM_JOB_ID", "556")  # another job aimed at the same folder
    assert main(edited) == 2
    err = capsys.readouterr().err
    assert "already holds a run with another config (trainer.total_steps: 3 -> 4)" in err
    assert (run_dir / "slurm" / "job_id").read_text() == "555\n"


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
