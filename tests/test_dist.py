"""dist.py: a local multi-rank run listens on the loopback interface only.

python -m pytest tests/test_dist.py -q
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time

from helpers import REPO, TINY, local_env, metrics


def _listening(pids: set[int]) -> list[str]:
    """Local addresses of the TCP sockets these processes listen on (from `ss -ltnp`)."""
    out = subprocess.run(["ss", "-Hltnp"], capture_output=True, text=True, check=True).stdout
    return [
        line.split()[3] for line in out.splitlines() if any(f"pid={pid}," in line for pid in pids)
    ]


def test_two_local_ranks_listen_on_loopback_only(tmp_path):
    cmd = [sys.executable, "-m", "hpc_ppo.cli", "run", TINY, "trainer.nprocs=2"]
    cmd += ["trainer.total_steps=50", f"trainer.output_dir={tmp_path}", "trainer.run_name=lo"]
    launcher = subprocess.Popen(cmd, cwd=REPO, env=local_env(), stdout=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not metrics(tmp_path / "lo", live=True):  # both ranks are up and training
            assert launcher.poll() is None and time.monotonic() < deadline
            time.sleep(0.2)
        ranks = subprocess.run(
            ["pgrep", "-P", str(launcher.pid)], capture_output=True, text=True
        ).stdout.split()
        assert len(ranks) == 2, ranks
        addresses = _listening({int(p) for p in ranks})
        assert addresses, "the ranks listen on nothing?"  # rank 0's store, gloo's pairs
        assert all(a.startswith("127.0.0.1:") for a in addresses), addresses
    finally:
        launcher.send_signal(signal.SIGTERM)
        assert launcher.wait(timeout=120) == 0
