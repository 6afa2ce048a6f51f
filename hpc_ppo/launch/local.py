"""`hpc-ppo run`: start `trainer.nprocs` ranks on this machine, without Slurm.

    hpc-ppo run configs/tiny-cpu.yaml trainer.nprocs=2

Each rank is a child process running `python -m hpc_ppo.rank RUN_DIR`, the entry srun calls,
with the torch-style variables (RANK, WORLD_SIZE, MASTER_ADDR, ...) set as torchrun would.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from hpc_ppo.atomic import atomic_write_text
from hpc_ppo.config import Config
from hpc_ppo.preempt import STOP_SIGNALS, stop_signals_blocked
from hpc_ppo.rank_env import find_free_port


def launch_local(cfg: Config, run_dir: Path) -> int:
    """Run every rank to completion; if one fails, stop the others. Returns the exit code."""
    n = cfg.trainer.nprocs
    port = find_free_port()
    threads = cfg.trainer.threads_per_rank or max(1, (os.cpu_count() or 1) // n)
    procs: list[subprocess.Popen] = []
    restart = _count_start(run_dir)  # 0 on the first start; `[restart N]` in run.log

    # A stop request for the launcher is a stop request for every rank: they agree, save and
    # exit 0 by themselves (Ctrl-C in a terminal already reaches them through the process group).
    def forward(signum: int, frame: object) -> None:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signum)

    previous = {sig: signal.signal(sig, forward) for sig in STOP_SIGNALS}
    try:
        for rank in range(n):
            env = {
                **os.environ,
                "RANK": str(rank),
                "LOCAL_RANK": str(rank),
                "WORLD_SIZE": str(n),
                "LOCAL_WORLD_SIZE": str(n),
                "MASTER_ADDR": "127.0.0.1",
                "MASTER_PORT": str(port),
                "OMP_NUM_THREADS": str(threads),
                "HPC_PPO_RESTART": str(restart),
            }
            # Blocked across the exec, a stop signal waits for the rank's handlers (hpc_ppo.rank
            # unblocks it) instead of killing the interpreter as it starts. Ranks agree on a
            # stop, so reaching the ranks already started is enough.
            with stop_signals_blocked():
                cmd = [sys.executable, "-m", "hpc_ppo.rank", str(run_dir)]
                procs.append(subprocess.Popen(cmd, env=env))
        return _wait_all(procs)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _count_start(run_dir: Path) -> int:
    """Starts of this run folder before this one (RUN_DIR/local_starts), and count this one."""
    path = run_dir / "local_starts"
    try:
        before = int(path.read_text().strip() or 0)
    except (OSError, ValueError):
        before = 0
    atomic_write_text(path, f"{before + 1}\n")
    return before


def _wait_all(procs: list[subprocess.Popen]) -> int:
    while True:
        codes = [p.poll() for p in procs]
        failed = [c for c in codes if c not in (None, 0)]
        if failed:
            _stop(procs)
            return failed[0] if failed[0] > 0 else 128 - failed[0]
        if all(c == 0 for c in codes):
            return 0
        time.sleep(0.2)


def _stop(procs: list[subprocess.Popen], grace_s: float = 10.0) -> None:
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    deadline = time.time() + grace_s
    for p in procs:
        try:
            p.wait(timeout=max(0.1, deadline - time.time()))
        except subprocess.TimeoutExpired:
            p.kill()
