"""The per-rank entry point: what every local process (`hpc-ppo run`) and srun task executes.

    python -m hpc_ppo.rank RUN_DIR

The run folder holds the resolved config.yaml written by the launcher; every rank reads it.

Its first statements install the stop handlers (hpc_ppo.preempt): torch, the config and the
trainer load only after them (a second or more), so a stop request that arrives meanwhile is
kept, not fatal. The first safe point to act on it is right after the process group exists:
then the ranks stop before building anything. The launchers start this module with the stop
signals blocked, which covers the interpreter's own start.
"""

from __future__ import annotations

import logging
import os
import sys
import traceback
import warnings
from pathlib import Path

from hpc_ppo.preempt import (  # standard library only
    StopFlag,
    in_slurm_job,
    requeue_slurm_job,
    save_on_stop,
)

log = logging.getLogger("hpc_ppo.rank")  # by name: this module runs as __main__
USER_CODE_EXIT = 3  # a user function failed; its one-line report is in RUN_DIR/LAST_ERROR
LAST_ERROR = "last_error"


def main(run_dir: str | Path, stop: StopFlag) -> int:
    """Train (or resume) the run in `run_dir` as this rank; returns the exit code."""
    # Imported here, after the caller installed `stop`: they take a second or more to load.
    import time

    from hpc_ppo.config import load_config
    from hpc_ppo.prefetch import prefetch_for_start
    from hpc_ppo.rank_env import resolve_rank_env

    # No torch yet: the checkpoint (and the weights) this rank will read are read ahead while
    # the imports below and the trainer's run (prefetch.py).
    run_dir = Path(run_dir).resolve()
    env = resolve_rank_env()
    cfg = load_config(run_dir / "config.yaml")
    prefetch_for_start(run_dir, cfg, env)

    import torch
    import torch.distributed as dist

    from hpc_ppo import checkpoint as ckpt
    from hpc_ppo.atomic import atomic_write_text
    from hpc_ppo.dist import init_distributed, pick_device
    from hpc_ppo.errors import ConfigError, PeerFailed, UserCodeError
    from hpc_ppo.metrics import process_age
    from hpc_ppo.runlog import setup_logging, to_run_log

    # Start-up seconds by phase (logged by the trainer, and as startup/* with the first step).
    startup = {"interpreter_and_imports": process_age() or 0.0}
    setup_start = time.perf_counter()

    setup_logging(run_dir, env.rank)  # stderr and RUN_DIR/run.log (runlog.py)
    print(
        f"hpc-ppo: rank {env.rank} of {env.world_size} on {os.uname().nodename} (local rank"
        f" {env.local_rank} of {env.local_world_size}, {env.source}), rendezvous"
        f" {env.master_addr}:{env.master_port}",
        flush=True,
    )
    threads = cfg.trainer.threads_per_rank or int(os.environ.get("OMP_NUM_THREADS", "0") or 0)
    if threads:
        torch.set_num_threads(threads)
    # The critic's output is a view of its head's output; nothing here modifies it in place
    # (the hazard FSDP2 warns about), so the warning would only fill every rank's log.
    warnings.filterwarnings("ignore", message=r"FSDP2-wrapped module .* returned a view tensor")
    device = pick_device(cfg.trainer.device, env.local_rank)
    start = time.perf_counter()
    startup["config_and_logging"] = start - setup_start
    init_distributed(env, device)
    startup["process_group"] = time.perf_counter() - start
    try:
        # The first point where the ranks can agree: a stop that came while they started
        # (imports, rendezvous) ends the run before the model loads, with nothing new to save.
        if stop.agreed():
            done = (ckpt.complete_steps(run_dir, warn=False) or [0])[-1]
            save_on_stop(stop, done, done, lambda: 0.0, env.rank)
            finished = False
        else:
            start = time.perf_counter()
            from hpc_ppo.trainer import Trainer  # transformers, DTensor, DCP: seconds on a GPU host

            startup["trainer_imports"] = time.perf_counter() - start
            trainer = Trainer(cfg, run_dir, env.rank, env.world_size, device, stop, startup)
            finished = trainer.fit()
        dist.barrier()
        if not finished:
            _after_stop(env.rank, run_dir)
    except ConfigError as e:  # bad input only a rank can see (a checkpoint of another shape)
        line = f"error: rank {env.rank}: {e}"
        print(line, file=sys.stderr, flush=True)
        to_run_log(log, line)
        return 2
    except UserCodeError as e:  # a reward function failed: every rank stopped together
        traceback.print_exc()  # the whole story in this rank's log; then the one line
        line = f"error: rank {env.rank}: {e}"
        print(line, file=sys.stderr, flush=True)
        to_run_log(log, line, with_traceback=True)  # and both in RUN_DIR/run.log
        atomic_write_text(run_dir / LAST_ERROR, line + "\n")  # the launcher's last line
        return USER_CODE_EXIT
    except PeerFailed:  # another rank reports it; the newest checkpoint is kept as it was
        return USER_CODE_EXIT
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    return 0


def _after_stop(rank: int, run_dir: Path) -> None:
    """The checkpoint is committed: requeue under Slurm (rank 0 only), else say how to go on."""
    from hpc_ppo import checkpoint as ckpt  # loaded by now

    if rank != 0:
        return
    if in_slurm_job():
        requeue_slurm_job((ckpt.complete_steps(run_dir, warn=False) or [0])[-1])
    else:
        print(f"hpc-ppo: stopped and saved; continue with: hpc-ppo run {run_dir}", flush=True)


def _exit_now(code: int) -> None:
    """Flush and leave without the interpreter's teardown. Every result is on disk by now
    (checkpoint committed, tracker closed); the teardown only frees torch's C++ objects in an
    undefined order, and a gloo group freed there once aborted a rank that had finished
    (SIGABRT, "terminate called without an active exception", exit 134 instead of 3).
    """
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    os._exit(code)


if __name__ == "__main__":
    stop = StopFlag().install()  # first: a stop signal from here on is recorded, never fatal
    if len(sys.argv) != 2:
        sys.exit("usage: python -m hpc_ppo.rank RUN_DIR")
    try:
        code = main(sys.argv[1], stop)
    finally:
        stop.retire()  # exiting: Python would restore the signals' default action (death)
    _exit_now(code)
