"""Stop requests: Slurm's warning signal (USR2), preemption / scancel (TERM), Ctrl-C (INT).

    hpc-ppo run configs/tiny-cpu.yaml & sleep 20; kill -TERM %1    # saves, says how to go on

The handler only records the signal; ranks agree on stopping through `StopFlag.agreed()`, an
all-reduce every rank calls at the same safe points (after the process group exists, between
rollout chunks and between steps), so no rank saves or exits alone. Never a collective or a
save inside the handler.

A stop request must never kill a rank, whenever it comes (a preemption often lands while a
requeued job restarts). Three windows, three measures:
  - from exec to the handlers: launchers start ranks with the stop signals blocked
    (`stop_signals_blocked` for local processes, `HOLD_SIGNALS` in front of srun's command), so
    a signal stays pending; `StopFlag.install()` runs before torch is imported and unblocks it.
  - the rest of the rank's life: the handlers record it (`hpc_ppo.rank`).
  - interpreter exit: Python resets its handlers to the default action (death) while it
    finalises, so `StopFlag.retire()` ignores the stop signals once the rank is done.

Standard library only at import time: the rank entry installs the handlers before torch loads.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from types import FrameType

log = logging.getLogger(__name__)
STOP_SIGNALS = (signal.SIGUSR2, signal.SIGTERM, signal.SIGINT)
# A shell word list for srun's command line: the task starts with the stop signals blocked.
# `env --block-signal` is coreutils >= 8.31; job_setup() leaves it out where `env` lacks it (the
# unguarded window is then the interpreter's own start, ~20 ms).
HOLD_SIGNALS = "env --block-signal=" + ",".join(s.name.removeprefix("SIG") for s in STOP_SIGNALS)


class StopFlag:
    def __init__(self) -> None:
        self.signal_name: str | None = None
        self.received_at: float | None = None  # time.time() of the first signal

    def install(self) -> StopFlag:
        for sig in STOP_SIGNALS:
            signal.signal(sig, self._handle)
        # Slurm sends SIGCONT right after the user signal; the default action is the right one.
        signal.signal(signal.SIGCONT, signal.SIG_DFL)
        # What arrived while the launcher held the signals blocked is delivered now, to _handle.
        signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
        return self

    def retire(self) -> None:
        """The rank is done (finished, or stopped and requeued): later stop requests have
        nothing left to stop, and must not kill the exiting interpreter (exit code by signal)."""
        ignore_stop_signals()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.received_at is None:
            self.signal_name = signal.Signals(signum).name
            self.received_at = time.time()

    @property
    def local(self) -> bool:
        return self.received_at is not None

    def agreed(self) -> bool:
        """True on every rank if any rank got a stop signal. A collective: call it everywhere."""
        import torch  # loaded by the time a process group exists; not before the handlers
        import torch.distributed as dist

        if not dist.is_initialized() or dist.get_world_size() == 1:
            return self.local
        t = torch.tensor([1.0 if self.local else 0.0])
        dist.all_reduce(t, op=dist.ReduceOp.MAX)  # gloo (CPU) even on NCCL jobs
        return bool(t.item())

    def seconds_since_signal(self) -> float | None:
        return None if self.received_at is None else time.time() - self.received_at


def ignore_stop_signals() -> None:
    """Stop requests do nothing to this process from now on (one that is pending while the
    signals are blocked is dropped when they are unblocked)."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)


@contextlib.contextmanager
def stop_signals_blocked() -> Iterator[None]:
    """Block the stop signals in this thread; processes started meanwhile inherit the mask
    (through exec) and keep a stop request pending until their handlers exist."""
    old = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def in_slurm_job() -> bool:
    return "SLURM_JOB_ID" in os.environ and "SLURM_STEP_ID" in os.environ


def requeue_slurm_job(resume_step: int) -> bool:
    """Get this job requeued (rank 0 only, after the checkpoint is committed), unless Slurm is
    already ending this run: then say what it does. True if the job will run again."""
    job = os.environ.get("SLURM_ARRAY_JOB_ID")
    job = f"{job}_{os.environ['SLURM_ARRAY_TASK_ID']}" if job else os.environ["SLURM_JOB_ID"]
    state, reason, restarts = _job_state(job)
    if restarts is not None and restarts > int(os.environ.get("SLURM_RESTART_COUNT") or 0):
        # `scontrol requeue` or preemption's kill round: Slurm counted a restart as it queued
        # the next run (the TERM that stopped us came with it). Requeueing again would not help.
        log.info(
            "Slurm requeued job %s (scontrol requeue / preemption); it will resume from step_%d",
            job,
            resume_step,
        )
        return True
    if state not in (None, "RUNNING") and reason != "TimeLimit":
        # `scancel`: Slurm requeues even a cancelled job if asked, and a cancel must stay one.
        # (Preemption's TERM comes while the job is still RUNNING, during GraceTime; the time
        # limit's with Reason=TimeLimit: both are requeued below.)
        log.info(
            "Slurm job %s was cancelled (%s): not requeued; checkpoint step_%d is saved",
            job,
            state,
            resume_step,
        )
        return False
    try:
        subprocess.run(
            ["scontrol", "requeue", job], check=True, capture_output=True, text=True, timeout=60
        )
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired, FileNotFoundError) as e:
        detail = getattr(e, "stderr", "") or str(e)
        # A requeue raced ours: Slurm already holds the job pending for its next run. (Not "is
        # no longer pending execution".)
        if "Job is pending execution" in detail:
            log.info("Slurm job %s is already requeued", job)
            return True
        # The requeue we asked for sends TERM to every process of the job, scontrol included
        # when it has not exited yet: it dies of it after the controller took the requeue.
        if isinstance(e, subprocess.CalledProcessError) and e.returncode < 0:
            _, _, now = _job_state(job)
            if now is not None and now > int(os.environ.get("SLURM_RESTART_COUNT") or 0):
                log.info("requeued Slurm job %s; it will resume from step_%d", job, resume_step)
                return True
        log.error(
            "scontrol requeue %s failed: %s; resubmit the job to continue", job, detail.strip()
        )
        return False
    log.info("requeued Slurm job %s; it will resume from step_%d", job, resume_step)
    return True


def _job_state(job: str) -> tuple[str | None, str | None, int | None]:
    """(JobState, Reason, Restarts) as `scontrol show job` prints them (a cancelled or requeued
    job shows COMPLETING, Reason=None until its tasks are gone; only a requeue counts a restart
    at once); None where unknown."""
    try:
        out = subprocess.run(
            ["scontrol", "show", "job", "-o", job], capture_output=True, text=True, timeout=30
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None, None, None
    fields = dict(re.findall(r"(?:^|\s)(JobState|Reason|Restarts)=(\S+)", out))
    restarts = fields.get("Restarts", "")
    return (
        fields.get("JobState"),
        fields.get("Reason"),
        int(restarts) if restarts.isdigit() else None,
    )


def save_on_stop(
    stop: StopFlag, done: int, saved: int, save: Callable[[], float], rank: int
) -> None:
    """The stop stage, after all ranks agreed to stop: make sure `done` steps are checkpointed
    (`save` is a collective: every rank calls this), then rank 0 says what was kept."""
    if saved != done:
        what = f"checkpoint step_{done} saved in {save():.2f} s"
    elif done:
        what = f"checkpoint step_{done} already saved"
    else:
        what = "no step done, nothing saved"
    if rank == 0:  # the signal time is rank 0's; every rank agreed to stop
        log.warning(
            "stop requested by %s: %s; exiting %.2f s after the signal",
            stop.signal_name or "another rank's signal",
            what,
            stop.seconds_since_signal() or 0.0,
        )
