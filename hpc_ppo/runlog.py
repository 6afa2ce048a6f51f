"""Each rank's logging: records on stderr (the Slurm log) and in the run's own log file.

    hpc-ppo run configs/tiny-cpu.yaml && cat runs/*/run.log      # rank 0's story, all warnings

`RUN_DIR/run.log` holds rank 0's records (INFO and up) and every rank's warnings and errors,
appended across requeues; each record names its restart (`SLURM_RESTART_COUNT`; outside
Slurm, how many times `hpc-ppo run` started this run folder before; 0 on the first start) and
rank, so `grep 'restart 1'` shows what the second job did.
Every rank appends to the one file: records are single `write` calls on an O_APPEND file,
which local and parallel file systems keep whole (a shared file beats one file per rank on a
login node: one `tail -f`).
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Mapping
from pathlib import Path

LOG_FILE = "run.log"


def restart_count(environ: Mapping[str, str] | None = None) -> int:
    """Slurm's restart count of this job; outside Slurm, how many times `hpc-ppo run RUN_DIR`
    started this run folder before (HPC_PPO_RESTART, set by launch/local.py); 0 when absent."""
    environ = os.environ if environ is None else environ
    try:
        return int(environ.get("SLURM_RESTART_COUNT") or environ.get("HPC_PPO_RESTART") or 0)
    except ValueError:
        return 0


def setup_logging(run_dir: Path, rank: int, environ: Mapping[str, str] | None = None) -> Path:
    """Rank 0 logs INFO and up, other ranks WARNING and up, to stderr and to RUN_DIR/run.log.

    Replaces handlers a previous call installed (tests call it more than once per process);
    returns the log file's path.
    """
    restart = restart_count(environ)
    level = logging.INFO if rank == 0 else logging.WARNING
    root = logging.getLogger()
    for h in list(root.handlers):
        if getattr(h, "_hpc_ppo", False):
            root.removeHandler(h)
            h.close()
    console = logging.StreamHandler()
    console.setFormatter(
        logging.Formatter(f"%(asctime)s [rank {rank}] %(levelname)s %(name)s: %(message)s")
    )
    path = run_dir / LOG_FILE
    file = logging.FileHandler(path, mode="a", encoding="utf-8")
    file.setFormatter(
        logging.Formatter(
            f"%(asctime)s [restart {restart}] [rank {rank}] %(levelname)s %(name)s: %(message)s"
        )
    )
    for h in (console, file):
        h.setLevel(level)
        h._hpc_ppo = True  # type: ignore[attr-defined]
        root.addHandler(h)
    root.setLevel(level)
    logging.captureWarnings(True)  # Python warnings (a library's deprecation) land here too
    return path


def to_run_log(logger: logging.Logger, message: str, with_traceback: bool = False) -> None:
    """An ERROR record in RUN_DIR/run.log only: for what the caller already printed to stderr
    in its own words (the one-line errors a rank ends with), so the log keeps them too. With
    `with_traceback`, the exception being handled goes with it."""
    record = logger.makeRecord(
        logger.name,
        logging.ERROR,
        "(rank)",
        0,
        message,
        None,
        sys.exc_info() if with_traceback else None,
    )
    for handler in logging.getLogger().handlers:
        if getattr(handler, "_hpc_ppo", False) and isinstance(handler, logging.FileHandler):
            handler.handle(record)
