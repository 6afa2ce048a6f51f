"""`hpc-ppo submit`, `render-sbatch` + plain sbatch and `status` on the real 2-node local Slurm
cluster (conftest.py): the tiny CPU config, 2 ranks on n1/n2, 3 steps.

HPC_PPO_REQUIRE_SLURM=1 python -m pytest tests/slurm/test_submit_slurm.py -q
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import helpers
import pytest
from helpers import REPO, TINY, metrics

pytestmark = pytest.mark.slurm

JOB_TIMEOUT_S = 90  # a 3-step tiny run takes ~20 s here; the margin is for a loaded machine


def hpc_ppo(cluster, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """The CLI as a user runs it: a fresh process, this cluster's SLURM_CONF, this checkout."""
    return subprocess.run(
        [sys.executable, "-m", "hpc_ppo.cli", *args],
        env=cluster.job_env(),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def field(stdout: str, label: str) -> str:
    """The value of a `label: value` line (the last one)."""
    lines = [line for line in stdout.splitlines() if line.startswith(f"{label}:")]
    assert lines, f"no {label}: line in\n{stdout}"
    return lines[-1].split(":", 1)[1].strip()


def logged_steps(run_dir: Path) -> list[int]:
    """Steps with a reward/mean record in metrics.jsonl, duplicates kept (there must be none)."""
    return sorted(r["step"] for r in metrics(run_dir, live=True) if "reward/mean" in r)


def wait_for_a_step(run_dir: Path) -> None:
    """Until the job has logged a step (then a stop request has something to save)."""
    deadline = time.monotonic() + JOB_TIMEOUT_S
    while not (run_dir / "metrics.jsonl").is_file() or not logged_steps(run_dir):
        assert time.monotonic() < deadline, "no step logged"
        time.sleep(0.2)


def assert_completed_after_one_restart(cluster, job_id: str, run_dir: Path, steps: int) -> None:
    """COMPLETED after one requeue: both starts in one appended log, each step logged once."""
    state = cluster.wait_job(int(job_id), timeout=JOB_TIMEOUT_S)
    log0 = (run_dir / "slurm" / f"{job_id}_0_log.out").read_text()
    assert state == "COMPLETED", log0
    assert cluster.job_info(int(job_id))["Restarts"] == "1"
    assert log0.count("hpc-ppo: rank 0 of 2 on n1") == 2
    assert logged_steps(run_dir) == list(range(steps))


def mlflow_runs(run_dir: Path) -> list:
    return helpers.mlflow_runs(run_dir)[1]


def test_submit_two_nodes_runs_to_completion_and_status_reports_it(slurm_cluster, tmp_path):
    out = tmp_path / "runs"
    proc = hpc_ppo(
        slurm_cluster,
        "submit",
        TINY,
        "slurm.nodes=2",
        "trainer.total_steps=3",
        f"trainer.output_dir={out}",
    )
    assert proc.returncode == 0, proc.stderr
    job_id = field(proc.stdout, "job_id")
    run_dir = Path(field(proc.stdout, "run_dir"))
    assert proc.stdout.splitlines()[-1] == f"run_dir: {run_dir}"
    assert f"tail -f {run_dir}/slurm/{job_id}_0_log.out" in proc.stdout

    state = slurm_cluster.wait_job(int(job_id), timeout=JOB_TIMEOUT_S)
    log0 = run_dir / "slurm" / f"{job_id}_0_log.out"
    assert state == "COMPLETED", log0.read_text()
    info = slurm_cluster.job_info(int(job_id))
    assert (info["NumNodes"], info["NumTasks"]) == ("2", "2")
    # world size 2: one task per "node", as each rank resolved it from SLURM_*
    assert "hpc-ppo: rank 0 of 2 on n1 (local rank 0 of 1, slurm)" in log0.read_text()
    log1 = (run_dir / "slurm" / f"{job_id}_1_log.out").read_text()
    assert "hpc-ppo: rank 1 of 2 on n2 (local rank 0 of 1, slurm)" in log1
    # the tasks run the rank entry, not submitit's runner: no result pickle, no "completed"
    assert not list((run_dir / "slurm").glob("*.pkl"))
    assert "Job completed successfully" not in log0.read_text()

    assert logged_steps(run_dir) == [0, 1, 2]
    runs = mlflow_runs(run_dir)
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    assert runs[0].info.run_id == (run_dir / "mlflow_run_id").read_text().strip()

    for target in (str(run_dir), job_id):
        st = hpc_ppo(slurm_cluster, "status", target, "--output-dir", str(out))
        assert st.returncode == 0, st.stderr
        assert field(st.stdout, "state").startswith("COMPLETED"), st.stdout
        assert field(st.stdout, "job_id") == job_id
        assert field(st.stdout, "run_dir") == str(run_dir)
        assert field(st.stdout, "restarts") == "0"
        assert field(st.stdout, "last_step").startswith("2 (3 of 3 steps logged) reward/mean=")
        assert field(st.stdout, "mlflow_run_id") == runs[0].info.run_id


def test_submit_to_a_missing_partition_names_the_key_and_leaves_no_run(slurm_cluster, tmp_path):
    out = tmp_path / "runs"
    proc = hpc_ppo(
        slurm_cluster, "submit", TINY, "slurm.partition=nope", f"trainer.output_dir={out}"
    )
    assert proc.returncode != 0
    assert "Invalid partition name specified" in proc.stderr  # sbatch's own words
    assert "change slurm.partition (now 'nope')" in proc.stderr
    assert "job_id:" not in proc.stdout and "run_dir:" not in proc.stdout
    assert not out.exists() or list(out.iterdir()) == []


def test_rendered_script_runs_under_plain_sbatch(slurm_cluster, tmp_path):
    out = tmp_path / "runs"  # render-sbatch creates it, with the run folder
    hostile = f"tracking.experiment=e $(touch {tmp_path}/pwned); touch {tmp_path}/pwned2"
    script = tmp_path / "job.sbatch"
    proc = hpc_ppo(
        slurm_cluster,
        "render-sbatch",
        TINY,
        "slurm.nodes=2",
        "trainer.total_steps=3",
        f"trainer.output_dir={out}",
        hostile,
        "-o",
        str(script),
    )
    assert proc.returncode == 0, proc.stderr
    run_dir = Path(field(proc.stdout, "run_dir"))
    job_id = slurm_cluster.sbatch(str(script))
    state = slurm_cluster.wait_job(job_id, timeout=JOB_TIMEOUT_S)
    log = run_dir / "slurm" / f"{job_id}_0_log.out"  # the layout of `submit`
    assert state == "COMPLETED", log.read_text()
    assert "hpc-ppo: rank 1 of 2 on n2" in (run_dir / "slurm" / f"{job_id}_1_log.out").read_text()
    assert logged_steps(run_dir) == [0, 1, 2]
    assert not (tmp_path / "pwned").exists() and not (tmp_path / "pwned2").exists()
    assert mlflow_runs(run_dir)[0].info.status == "FINISHED"
    st = hpc_ppo(slurm_cluster, "status", str(job_id), "--output-dir", str(out))
    assert st.returncode == 0, st.stderr
    assert field(st.stdout, "run_dir") == str(run_dir)
    assert field(st.stdout, "state").startswith("COMPLETED")
    assert field(st.stdout, "log") == str(log)


def test_submitted_job_stops_on_usr2_requeues_and_resumes(slurm_cluster, tmp_path):
    """The submit path end to end with a stop request: the ranks save and requeue, --requeue
    lets the job run again under the same id, and --open-mode=append keeps the first run's log."""
    proc = hpc_ppo(
        slurm_cluster,
        "submit",
        TINY,
        "slurm.nodes=2",
        "trainer.total_steps=8",
        f"trainer.output_dir={tmp_path / 'runs'}",
    )
    assert proc.returncode == 0, proc.stderr
    job_id, run_dir = field(proc.stdout, "job_id"), Path(field(proc.stdout, "run_dir"))
    wait_for_a_step(run_dir)
    slurm_cluster.run(["scancel", "--signal=USR2", job_id])
    assert_completed_after_one_restart(slurm_cluster, job_id, run_dir, steps=8)
    st = hpc_ppo(slurm_cluster, "status", job_id, "--output-dir", str(tmp_path / "runs"))
    assert field(st.stdout, "restarts") == "1"
    assert field(st.stdout, "last_step").startswith("7 (8 of 8 steps logged)")


@pytest.mark.parametrize("launch", ["render-sbatch", "submit"])
def test_yaml_edited_before_a_requeue_changes_nothing(slurm_cluster, tmp_path, launch):
    """Issue 10: both paths run the config snapshot taken at submission. The YAML is edited
    while the job runs (total_steps 6 -> 2, a key a resume refuses), then `scontrol requeue`:
    the job resumes with total_steps=6 and completes, one MLflow run."""
    config = tmp_path / "exp.yaml"
    config.write_text(Path(TINY).read_text())
    out = tmp_path / "runs"
    args = [str(config), "slurm.nodes=2", "trainer.total_steps=6", f"trainer.output_dir={out}"]
    if launch == "render-sbatch":
        proc = hpc_ppo(slurm_cluster, "render-sbatch", *args, "-o", str(tmp_path / "job.sbatch"))
        assert proc.returncode == 0, proc.stderr
        job_id = str(slurm_cluster.sbatch(str(tmp_path / "job.sbatch")))
    else:
        proc = hpc_ppo(slurm_cluster, "submit", *args)
        assert proc.returncode == 0, proc.stderr
        job_id = field(proc.stdout, "job_id")
    run_dir = Path(field(proc.stdout, "run_dir"))
    assert run_dir.parent == out and run_dir.name.startswith("exp-20")  # one naming for both
    wait_for_a_step(run_dir)
    config.write_text(
        Path(TINY)
        .read_text()
        .replace("total_steps: 50", "total_steps: 2")
        .replace("lr: 1.0e-3", "lr: 0.5")
    )
    slurm_cluster.run(["scontrol", "requeue", job_id])
    # the submitted total_steps, not the edited one
    assert_completed_after_one_restart(slurm_cluster, job_id, run_dir, steps=6)
    from hpc_ppo.config import load_config

    saved = load_config(run_dir / "config.yaml")
    assert (saved.trainer.total_steps, saved.actor.lr) == (6, 1.0e-3)
    runs = mlflow_runs(run_dir)
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
