"""The per-rank entry point: the same function for `hpc-ppo run` (local processes) and srun.

    python -m hpc_ppo.rank RUN_DIR      # what each local process / srun task executes

The run folder holds the resolved config.yaml written by the launcher; every rank reads it.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings
from pathlib import Path

import torch
import torch.distributed as dist

from hpc_ppo.config import load_config
from hpc_ppo.dist import init_distributed, pick_device
from hpc_ppo.errors import ConfigError
from hpc_ppo.launch.env import resolve_rank_env
from hpc_ppo.preempt import StopFlag, in_slurm_job, requeue_slurm_job


def main(run_dir: str | Path) -> None:
    run_dir = Path(run_dir).resolve()
    env = resolve_rank_env()
    cfg = load_config(run_dir / "config.yaml")
    logging.basicConfig(
        level=logging.INFO if env.rank == 0 else logging.WARNING,
        format=f"%(asctime)s [rank {env.rank}] %(levelname)s %(name)s: %(message)s",
    )
    threads = cfg.trainer.threads_per_rank or int(os.environ.get("OMP_NUM_THREADS", "0") or 0)
    if threads:
        torch.set_num_threads(threads)
    # The critic's output is a view of its head's output; nothing here modifies it in place
    # (the hazard FSDP2 warns about), so the warning would only fill every rank's log.
    warnings.filterwarnings("ignore", message=r"FSDP2-wrapped module .* returned a view tensor")
    stop = StopFlag()
    stop.install()  # before anything slow, and after submitit's handlers: ours must win
    device = pick_device(cfg.trainer.device, env.local_rank)
    init_distributed(env, device)
    try:
        from hpc_ppo.trainer import Trainer

        finished = Trainer(cfg, run_dir, env.rank, env.world_size, device, stop).fit()
        dist.barrier()
        if not finished:
            _after_stop(env.rank, run_dir)
    except ConfigError as e:  # bad input only a rank can see (a checkpoint of another shape)
        print(f"error: rank {env.rank}: {e}", file=sys.stderr, flush=True)
        sys.exit(2)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def _after_stop(rank: int, run_dir: Path) -> None:
    """The checkpoint is committed: requeue under Slurm (rank 0 only), else say how to go on."""
    if rank != 0:
        return
    if in_slurm_job():
        requeue_slurm_job()
    else:
        print(f"hpc-ppo: stopped and saved; continue with: hpc-ppo run {run_dir}", flush=True)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m hpc_ppo.rank RUN_DIR")
    main(sys.argv[1])
