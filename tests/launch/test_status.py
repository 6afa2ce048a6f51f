"""`hpc-ppo status` without a cluster: what it reads from a run folder, and Slurm's answers
from a fake `scontrol` / `sacct` (the boundary).

Run: python -m pytest tests/launch/test_status.py -q
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from helpers import write_executable

from hpc_ppo.cli import main
from hpc_ppo.launch import status


def norm(out: str) -> str:
    """`status` output with its label padding collapsed: "label: text" per line."""
    return "\n".join(" ".join(line.split()) for line in out.splitlines())


def test_parse_scontrol_keeps_values_with_spaces():
    line = (
        "JobId=7 JobName=my job JobState=RUNNING Reason=None Restarts=2 "
        "StdOut=/tmp/a b/7.out WorkDir=/w Socks/Node=* TRES=cpu=2,node=1"
    )
    info = status.parse_scontrol(line)
    assert info["JobName"] == "my job"
    assert info["StdOut"] == "/tmp/a b/7.out"
    assert (info["Restarts"], info["Socks/Node"], info["TRES"]) == ("2", "*", "cpu=2,node=1")


def _run_dir(tmp_path: Path, job_id: str | None = "77") -> Path:
    run_dir = tmp_path / "runs" / "r"
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text("trainer: {total_steps: 5}\n")
    (run_dir / "metrics.jsonl").write_text(
        '{"step": 0, "time": 1, "reward/mean": 0.1}\n'
        '{"step": 1, "time": 2, "reward/mean": 0.25, "time/step": 1.5}\n'
        '{"step": 1, "time": 2, "critic/vf_loss": 0.5}\n'
        '{"step": 2, "ti'  # a partial last line of a killed job
    )
    (run_dir / "mlflow_run_id").write_text("abc123\n")
    ckpt = run_dir / "checkpoints"
    (ckpt / "step_1").mkdir(parents=True)
    (ckpt / "step_1" / "COMPLETE").write_text("")
    (ckpt / "step_1" / "trainer.json").write_text("{}")
    (ckpt / "step_2.tmp").mkdir()
    if job_id:
        status.record_job(run_dir, job_id)
    return run_dir


@pytest.fixture
def fake_scontrol(tmp_path, monkeypatch):
    """`scontrol show job -o 77` answers like slurmctld; any other id is unknown; no sacct."""
    bin_dir = tmp_path / "sc-bin"
    bin_dir.mkdir()
    log = tmp_path / "runs" / "r" / "slurm" / "77_0_log.out"
    write_executable(
        bin_dir / "scontrol",
        f"""#!/bin/sh
if [ "$4" = 77 ]; then
  echo "JobId=77 JobName=r JobState=COMPLETED Reason=None Restarts=1 RunTime=00:01:02 ExitCode=0:0 StdOut={log} WorkDir=/nowhere"
else
  echo "slurm_load_jobs error: Invalid job id specified" >&2; exit 1
fi
""",
    )
    monkeypatch.setenv("PATH", str(bin_dir))  # no sacct either: tolerated
    return log


def test_status_of_a_run_dir(tmp_path, fake_scontrol, capsys):
    run_dir = _run_dir(tmp_path)
    fake_scontrol.write_text("log\n")
    assert main(["status", str(run_dir)]) == 0
    out = norm(capsys.readouterr().out)
    assert "job_id: 77" in out
    assert "state: COMPLETED (scontrol; run time 00:01:02; exit code 0:0)" in out
    assert "restarts: 1" in out
    assert (
        "last_step: 1 (2 of 5 steps logged) reward/mean=0.25 critic/vf_loss=0.5 time/step=1.5"
        in out
    )
    assert f"checkpoint: {run_dir}/checkpoints/step_1" in out
    assert "mlflow_run_id: abc123" in out
    assert f"log: {fake_scontrol}" in out


def test_status_by_job_id_uses_the_index_or_the_log_path(tmp_path, fake_scontrol, capsys):
    run_dir = _run_dir(tmp_path)
    assert main(["status", "77", "--output-dir", str(tmp_path / "runs")]) == 0
    assert f"run_dir: {run_dir}" in norm(capsys.readouterr().out)
    (tmp_path / "runs" / ".jobs" / "77").unlink()  # no index: scontrol's StdOut leads there
    assert main(["status", "77", "--output-dir", str(tmp_path / "elsewhere")]) == 0
    assert f"run_dir: {run_dir}" in norm(capsys.readouterr().out)


def test_status_of_an_unknown_job_or_a_local_run(tmp_path, fake_scontrol, capsys):
    assert main(["status", "123", "--output-dir", str(tmp_path)]) == 2
    out, err = capsys.readouterr()
    out = norm(out)
    assert "state: unknown (neither scontrol nor sacct knows the job)" in out
    assert "no run folder found for job 123" in err
    run_dir = _run_dir(tmp_path, job_id=None)
    assert main(["status", str(run_dir)]) == 0
    out = norm(capsys.readouterr().out)
    assert "job_id: none (not launched through Slurm)" in out and "state:" not in out
    assert main(["status", "not-a-dir-or-id"]) == 2


def test_status_falls_back_to_sacct_once_slurmctld_forgot_the_job(tmp_path, fake_scontrol, capsys):
    run_dir = _run_dir(tmp_path, job_id="88")
    sacct = Path(os.environ["PATH"]) / "sacct"
    write_executable(sacct, '#!/bin/sh\necho "88|TIMEOUT|0:0|01:00:03|/w"\n')
    assert main(["status", str(run_dir)]) == 0
    out = norm(capsys.readouterr().out)
    assert "state: TIMEOUT (sacct; elapsed 01:00:03; exit code 0:0)" in out
    assert "restarts: unknown (slurmctld no longer holds the job)" in out
