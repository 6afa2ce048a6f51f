"""Stop requests on the real 2-node local Slurm cluster (conftest.py), through `hpc-ppo submit`.

HPC_PPO_REQUIRE_SLURM=1 python -m pytest tests/slurm/test_preempt_slurm.py -q

Three ways Slurm stops a running job, each mid-run of the tiny CPU config on n1/n2:
  `scancel --signal=USR2`   the tasks get USR2 (what `--signal=USR2@lead` sends before the limit)
  `scontrol requeue`        SIGTERM to tasks and batch shell, SIGKILL after KillWait=5 s
  partition preemption      USR2 (preempt_send_user_signal), requeue after GraceTime=10 s
Every time the ranks must agree to stop, save, get the job requeued (once per stop), resume
from that checkpoint and end COMPLETED with one MLflow run holding each metric once per step.
Stopped twice, a run must end bitwise equal to an uninterrupted one. A plain `scancel` (SIGTERM
too) must save and leave the job CANCELLED: the ranks must not requeue it.

The seconds from the signal to the ranks' exit are printed next to the median step time.
"""

from __future__ import annotations

import os
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import helpers
import pytest
import torch
from helpers import REPO, TINY, final_weights, metrics, mlflow_client, mlflow_run

from hpc_ppo import checkpoint as ckpt
from hpc_ppo.config import load_config
from hpc_ppo.model import build_tokenizer, load_policy

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

PHASE_TIMEOUT_S = 75  # one phase (start, a few steps, a requeue) on a loaded 2-core host
STOP_LINE = re.compile(
    r"stop requested by (SIG\w+): checkpoint step_(\d+) saved in ([\d.]+) s; "
    r"exiting ([\d.]+) s after the signal"
)
RESUME_LINE = re.compile(r"resumed from (\S+)/checkpoints/step_(\d+): (\d+) of (\d+) steps done")


@dataclass(frozen=True)
class Stop:
    signal: str
    step: int  # the checkpoint it saved: steps done
    save_s: float
    exit_s: float  # signal -> ranks leave the loop


@dataclass
class Job:
    cluster: object  # conftest.SlurmCluster
    id: str
    run_dir: Path
    steps: int
    save_every: int

    def log(self, task: int = 0) -> str:
        path = self.run_dir / "slurm" / f"{self.id}_{task}_log.out"
        return path.read_text(errors="replace") if path.is_file() else ""

    def info(self) -> dict[str, str]:
        return self.cluster.job_info(int(self.id))

    def rows(self) -> list[dict]:
        """metrics.jsonl records (whole lines only: the job may be writing one)."""
        return metrics(self.run_dir, live=True)

    def logged(self) -> int:
        """Steps with a logged update, i.e. steps done as far as metrics.jsonl knows."""
        return len({r["step"] for r in self.rows() if "reward/mean" in r})

    def stops(self) -> list[Stop]:
        return [
            Stop(m[1], int(m[2]), float(m[3]), float(m[4])) for m in STOP_LINE.finditer(self.log())
        ]

    def resumes(self) -> list[int]:
        out = []
        for m in RESUME_LINE.finditer(self.log()):
            assert m[1] == str(self.run_dir) and m[2] == m[3] and int(m[4]) == self.steps, m[0]
            out.append(int(m[2]))
        return out

    def explain(self) -> str:
        tail = "\n".join(f"--- task {t} log (tail)\n{self.log(t)[-3000:]}" for t in (0, 1))
        return f"job {self.id}: {self.info()}\n{tail}"

    def wait_for(self, ready: Callable[[], bool], what: str, timeout: float = PHASE_TIMEOUT_S):
        """Poll `ready`; fail (naming `what`) on timeout or if the job ends first."""
        deadline = time.monotonic() + timeout
        while not ready():
            if self.info().get("JobState") in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT"):
                pytest.fail(f"job ended before: {what}\n{self.explain()}", pytrace=False)
            if time.monotonic() > deadline:
                pytest.fail(f"not within {timeout} s: {what}\n{self.explain()}", pytrace=False)
            time.sleep(0.2)

    def wait_requeued(self, restarts: int) -> int:
        """Wait until the job's tasks are gone and it is pending as restart `restarts`; return
        the steps logged then (every rank has exited, the next run has not started)."""
        self.wait_for(
            lambda: (
                (i := self.info()).get("JobState") == "PENDING"
                and int(i.get("Restarts", 0)) >= restarts
            ),
            f"requeued (PENDING, Restarts={restarts})",
        )
        assert int(self.info()["Restarts"]) == restarts, self.explain()
        return self.logged()

    def wait_completed(self, restarts: int) -> None:
        state = self.cluster.wait_job(int(self.id), timeout=PHASE_TIMEOUT_S)
        assert state == "COMPLETED", self.explain()
        assert self.info()["Restarts"] == str(restarts), self.explain()
        assert ckpt.complete_steps(self.run_dir)[-1] == self.steps
        assert not list(ckpt.checkpoint_root(self.run_dir).glob("*.tmp")), "a save left .tmp"

    def saved_steps(self) -> list[int]:
        """Steps whose metrics carry time/save (the trainer's periodic and final saves)."""
        return [
            s
            for s in range(self.steps)
            if s + 1 == self.steps or (self.save_every and (s + 1) % self.save_every == 0)
        ]


@pytest.fixture
def submit(slurm_cluster, tmp_path) -> Iterator[Callable[..., Job]]:
    """`hpc-ppo submit` as a user types it; every job of the test is cancelled at the end."""
    ids: list[str] = []

    def _submit(name: str, steps: int, *overrides: str) -> Job:
        settings = {
            "slurm.nodes": "2",
            "trainer.total_steps": str(steps),
            "trainer.save_every": "0",
            "rollout.chunks": "4",
            "trainer.output_dir": str(tmp_path / name),
            "trainer.run_name": "run",
        }
        settings.update(o.split("=", 1) for o in overrides)
        proc = subprocess.run(
            [sys.executable, "-m", "hpc_ppo.cli", "submit", TINY]
            + [f"{k}={v}" for k, v in settings.items()],
            env=slurm_cluster.job_env(),
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert proc.returncode == 0, proc.stderr
        job_id = re.search(r"^job_id: (\d+)$", proc.stdout, re.M)[1]
        ids.append(job_id)
        run_dir = Path(re.search(r"^run_dir: (.+)$", proc.stdout, re.M)[1])
        return Job(slurm_cluster, job_id, run_dir, steps, int(settings["trainer.save_every"]))

    _submit.ids = ids  # other jobs (the preemptor) to cancel at the end
    yield _submit
    for job_id in ids:
        slurm_cluster.run(["scancel", job_id], check=False)


def history(job: Job) -> dict[int, dict[str, float]]:
    return helpers.history(job.rows())


def check_mlflow(job: Job, restarts: int) -> None:
    """One run, FINISHED, tagged with the job; every metric once per step, as in metrics.jsonl."""
    client, run = mlflow_run(job.run_dir)
    assert run.info.status == "FINISHED"
    assert run.info.run_id == (job.run_dir / "mlflow_run_id").read_text().strip()
    tags = run.data.tags
    assert tags.get("launcher") == "slurm", tags
    assert tags.get("slurm.job_id") == job.id, tags
    assert tags.get("slurm.restart_count") == str(restarts), tags
    logged: dict[str, dict[int, float]] = {}
    for row in job.rows():
        for key, value in row.items():
            if key not in ("step", "time"):
                logged.setdefault(key, {})[row["step"]] = value
    assert set(run.data.metrics) == set(logged)
    for key, by_step in logged.items():
        points = client.get_metric_history(run.info.run_id, key)
        steps = sorted(m.step for m in points)
        expected = job.saved_steps() if key == "time/save" else list(range(job.steps))
        if key.startswith("startup/"):  # the first step of each (re)start
            expected = sorted(by_step)
        assert steps == expected, (key, steps)
        assert {m.step: m.value for m in points} == by_step, key


def report(capsys, job: Job, what: str) -> None:
    """Print signal -> exit of each stop next to the median step time (for the acceptance note)."""
    step_s = statistics.median(r["time/step"] for r in job.rows() if "time/step" in r)
    with capsys.disabled():
        for s in job.stops():
            print(
                f"\n[{what}] {s.signal}: signal -> exit {s.exit_s:.2f} s (save {s.save_s:.2f} s);"
                f" median step {step_s:.2f} s"
            )


def mlflow_tags(job: Job) -> dict[str, str]:
    """The run's tags now, while the job may be running (its run id file exists by then)."""
    run_id = (job.run_dir / "mlflow_run_id").read_text().strip()
    return mlflow_client(job.run_dir).get_run(run_id).data.tags


def test_usr2_twice_requeues_resumes_and_ends_bitwise_equal_to_uninterrupted(
    slurm_cluster, submit, capsys
):
    """`scancel --signal=USR2` mid-run, twice: the ranks save, requeue the job themselves and
    resume from exactly the saved step; the end state equals an uninterrupted job's."""
    steps = 20  # resumed steps take ~0.4 s: room for the second USR2 under load
    # Both at once: each holds 1 of the 2 CPUs of n1 and n2.
    ref = submit("ref", steps)
    job = submit("stopped", steps)
    done = 0
    for restart in (1, 2):
        job.wait_for(lambda n=done: job.logged() >= n + 2, f"2 more steps after {done}")
        slurm_cluster.run(["scancel", "--signal=USR2", job.id])
        done = job.wait_requeued(restart)  # the ranks requeued it: Restarts grew by one
        stop = job.stops()[-1]
        assert len(job.stops()) == restart and stop.signal == "SIGUSR2", job.explain()
        # Nothing done is lost, nothing is ahead: the checkpoint holds exactly the logged
        # steps (a step cut short mid-rollout logged nothing).
        assert stop.step == done < steps, (stop, done, job.explain())
        if restart == 1:  # the next run reattaches to the MLflow run and tags its restart
            job.wait_for(lambda n=done: job.logged() > n, "a step after the restart")
            job.wait_for(
                lambda: mlflow_tags(job).get("slurm.restart_count") == "1",
                "MLflow tag slurm.restart_count=1",
                timeout=30,
            )
    job.wait_completed(restarts=2)
    ref.wait_completed(restarts=0)

    assert job.resumes() == [s.step for s in job.stops()], job.explain()
    assert "resubmit the job" not in job.log()
    wa, wb = final_weights(ref.run_dir), final_weights(job.run_dir)
    assert wa.keys() == wb.keys() and any(k.startswith("critic.") for k in wa)
    differ = [k for k in wa if not torch.equal(wa[k], wb[k])]
    assert not differ, f"{len(differ)} tensors differ, e.g. {differ[:3]}"
    # Equal because training is deterministic, not because nothing was trained.
    cfg = load_config(ref.run_dir / "config.yaml")
    fresh = load_policy(cfg.model, build_tokenizer(cfg.model), cfg.trainer.seed).state_dict()
    assert not torch.equal(fresh["lm_head.weight"], wa["policy.lm_head.weight"])

    ha, hb = history(ref), history(job)
    assert sorted(ha) == list(range(steps))
    assert ha == hb
    check_mlflow(ref, restarts=0)
    check_mlflow(job, restarts=2)
    report(capsys, job, "scancel --signal=USR2")


def test_scontrol_requeue_sends_term_saves_and_continues(slurm_cluster, submit, capsys):
    job = submit("requeue", 10, "trainer.save_every=3")
    job.wait_for(lambda: job.logged() >= 4, "4 steps logged")
    slurm_cluster.run(["scontrol", "requeue", job.id])
    before = job.wait_requeued(1)
    job.wait_completed(restarts=1)  # 1: the ranks did not requeue it a second time

    stops = job.stops()
    [resumed] = job.resumes()
    if stops:  # TERM became a stop request and the save beat SIGKILL (KillWait=5 s)
        [stop] = stops
        assert stop.signal == "SIGTERM", job.explain()
        assert stop.step == before == resumed, (stop, before, resumed)
        # rank 0 saw the job already on its way back and left it to Slurm, saying so plainly
        said = f"INFO hpc_ppo.preempt: Slurm requeued job {job.id} (scontrol requeue / preemption);"
        assert f"{said} it will resume from step_{stop.step}" in job.log(), job.explain()
        report(capsys, job, "scontrol requeue")
    else:  # killed first: the previous periodic checkpoint, the steps after it are redone
        assert resumed % 3 == 0 and 3 <= resumed <= before, (resumed, before)
        with capsys.disabled():
            print(f"\n[scontrol requeue] killed before saving; resumed at {resumed} of {before}")
    assert "resubmit the job" not in job.log(), job.explain()
    assert sorted(history(job)) == list(range(job.steps))
    check_mlflow(job, restarts=1)


def test_partition_preemption_usr2_saves_requeues_and_resumes_after_the_high_job(
    slurm_cluster, submit, tmp_path, capsys
):
    # 1 task x 2 CPUs on each node fills both; the high job needs every CPU of both nodes.
    job = submit("preempt", 8, "slurm.cpus_per_task=2", "slurm.partition=debug")
    job.wait_for(lambda: job.logged() >= 2, "2 steps logged")
    assert job.info()["NumCPUs"] == "4"
    high = slurm_cluster.sbatch(
        "-p", "high", "-N2", "--ntasks-per-node=2", f"--output={tmp_path}/high.out",
        "--wrap", "sleep 5",
    )  # fmt: skip
    submit.ids.append(str(high))
    before = job.wait_requeued(1)
    assert slurm_cluster.wait_job(high, timeout=PHASE_TIMEOUT_S) == "COMPLETED"
    job.wait_completed(restarts=1)

    [stop] = job.stops()
    # preempt_send_user_signal: the job's own --signal (USR2), not SIGTERM, and within GraceTime
    assert stop.signal == "SIGUSR2", job.explain()
    assert stop.step == before == job.resumes()[0], (stop, before, job.explain())
    assert f"requeued Slurm job {job.id}" in job.log()  # by rank 0, before GraceTime ran out
    # The low job came back only once the high one had finished (same-second resolution).
    assert job.info()["StartTime"] >= slurm_cluster.job_info(high)["EndTime"]
    assert sorted(history(job)) == list(range(job.steps))
    check_mlflow(job, restarts=1)
    report(capsys, job, "preemption")


def test_scancel_saves_on_term_and_the_job_stays_cancelled(slurm_cluster, submit, capsys):
    """TERM is a stop request (preemption without preempt_send_user_signal sends it), but a
    plain `scancel` must end the job: Slurm requeues even a cancelled job if asked, so the
    ranks must not ask."""
    job = submit("scancel", 8)
    job.wait_for(lambda: job.logged() >= 2, "2 steps logged")
    slurm_cluster.run(["scancel", job.id])
    state = slurm_cluster.wait_job(
        int(job.id), states={"CANCELLED", "PENDING", "COMPLETED", "FAILED"}, timeout=30
    )
    assert (state, job.info()["Restarts"]) == ("CANCELLED", "0"), job.explain()
    [stop] = job.stops()
    assert stop.signal == "SIGTERM", job.explain()
    assert ckpt.complete_steps(job.run_dir)[-1] == stop.step == job.logged(), job.explain()
    _, run = mlflow_run(job.run_dir)
    assert run.info.status == "KILLED"
    report(capsys, job, "scancel")


# ---------------------------------------------------------------- a stop in a task's first seconds

# Offsets (s) after the first task of a job starts: its interpreter starting (0), importing
# torch (0.5-1.5), connecting to the other rank (2). A stop request there used to kill the task
# with the signal's default action: job FAILED (exit code 140), never requeued.
USR2_OFFSETS_S = (0.0, 0.5, 1.0, 2.0)
PREEMPT_OFFSETS_S = (0.0, 1.0, 2.0)
_HZ = os.sysconf("SC_CLK_TCK")


def task_age(run_dir: Path) -> float | None:
    """Seconds since the job's first task started, None before. The local cluster's nodes are
    this host, so /proc shows the tasks (`[env --block-signal=...] python -u -m hpc_ppo.rank
    RUN_DIR`; srun's own command line holds the same words)."""
    now, ages = float(Path("/proc/uptime").read_text().split()[0]), []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            if b"hpc_ppo.rank" in argv and str(run_dir).encode() in argv and b"srun" not in argv[0]:
                stat = Path(f"/proc/{pid}/stat").read_text()
                ages.append(now - int(stat.rsplit(")", 1)[1].split()[19]) / _HZ)
        except OSError:  # gone meanwhile
            continue
    return max(ages, default=None)


def at_task_age(job: Job, offset_s: float, action: Callable[[], object]) -> float:
    """Run `action` `offset_s` after the job's first task started; returns the age it ran at."""
    deadline = time.monotonic() + PHASE_TIMEOUT_S
    while (age := task_age(job.run_dir)) is None:  # a tight loop: offset 0 is the point
        assert time.monotonic() < deadline, f"no task started\n{job.explain()}"
        time.sleep(0.01)
    time.sleep(max(0.0, offset_s - age))
    age = task_age(job.run_dir) or 0.0
    action()
    return age


def check_honoured(job: Job, signal_name: str) -> str:
    """The ranks took the stop, requeued the job themselves, and it then completed: one
    MLflow run, every step logged once. Returns how the stop was taken."""
    job.wait_completed(restarts=1)
    logs = job.log() + job.log(1)
    assert "User defined signal" not in logs, job.explain()
    assert "Job completed successfully" not in logs, job.explain()  # no submitit runner
    assert not list((job.run_dir / "slurm").glob("*.pkl")), "a result pickle claims an end"
    assert f"INFO hpc_ppo.preempt: requeued Slurm job {job.id}" in job.log(), job.explain()
    # before the process group (rank.py), before the first step (Trainer.fit), or after one
    taken = re.search(rf"stop requested by {signal_name}[ :]([^;]*);", job.log())
    assert taken, job.explain()
    if job.stops():
        [stop] = job.stops()
        assert stop.step == job.resumes()[0], job.explain()
    assert sorted(history(job)) == list(range(job.steps))
    check_mlflow(job, restarts=1)
    return taken[1].strip()


def test_usr2_in_a_tasks_first_seconds_is_honoured(slurm_cluster, submit, capsys):
    """`scancel --signal=USR2` (what `--signal=USR2@lead` sends) aimed at 0-2 s after a task
    started. Two jobs fit at once (1 CPU per node each); the signals go one job at a time."""
    aimed = []
    for offset in USR2_OFFSETS_S:
        job = submit(f"usr2-{offset}", 3)
        usr2 = ["scancel", "--signal=USR2", job.id]
        aimed.append((job, offset, at_task_age(job, offset, lambda c=usr2: slurm_cluster.run(c))))
    for job, offset, age in aimed:
        how = check_honoured(job, "SIGUSR2")
        with capsys.disabled():
            print(f"\n[USR2 at {offset:.1f} s] sent at task age {age:.2f} s: stopped {how}")


def test_preemption_in_a_tasks_first_seconds_is_honoured(slurm_cluster, submit, tmp_path, capsys):
    """A high-priority job arrives 0-2 s after a task of the low job started (as when it
    lands while a requeued job restarts): USR2 (preempt_send_user_signal), GraceTime 10 s."""
    high: list[int] = []
    sbatch_high = [
        "-p", "high", "-N2", "--ntasks-per-node=2", f"--output={tmp_path}/high.out",
        "--wrap", "sleep 2",
    ]  # fmt: skip
    for offset in PREEMPT_OFFSETS_S:
        # 1 task x 2 CPUs on each node fills both; the high job needs every CPU of both.
        job = submit(f"preempt-{offset}", 3, "slurm.cpus_per_task=2", "slurm.partition=debug")
        age = at_task_age(job, offset, lambda: high.append(slurm_cluster.sbatch(*sbatch_high)))
        submit.ids.append(str(high[-1]))
        assert slurm_cluster.wait_job(high[-1], timeout=PHASE_TIMEOUT_S) == "COMPLETED"
        how = check_honoured(job, "SIGUSR2")
        with capsys.disabled():
            print(f"\n[preemption at {offset:.1f} s] high job at task age {age:.2f} s: {how}")
