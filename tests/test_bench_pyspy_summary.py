"""bench/pyspy_summary.py on a recording in py-spy's raw format: seconds per process and
thread, importing time, and functions counted once per sample."""

from __future__ import annotations

import json
import subprocess
import sys

from helpers import REPO

IMPORT = "_find_and_load (<frozen importlib._bootstrap>:1176)"
# --subprocesses: a child's samples name the chain of processes from the root
RANK = 'process 8:"python3 bench/step.py";process 7:"python3 -m hpc_ppo.rank /r"'
RAW = "\n".join(
    [
        f"{RANK};thread (7): MainThread;<module> (hpc_ppo/rank.py:140)"
        f";main (hpc_ppo/rank.py:80);{IMPORT};<module> (vllm/__init__.py:3) 30",
        f"{RANK};thread (7): MainThread;<module> (hpc_ppo/rank.py:140)"
        ";main (hpc_ppo/rank.py:81);f (a.py:1);f (a.py:2);g (a.py:9) 20",
        f"{RANK};thread (9): mlflow-tracker;run (threading.py:1);{IMPORT} 60",
        'process 8:"python3 bench/step.py";thread (8): MainThread;wait (subprocess.py:1) 10',
        "py-spy> Wrote raw flamegraph data",
    ]
)


def test_seconds_by_thread_importing_and_functions(tmp_path):
    path = tmp_path / "gil.txt"
    path.write_text(RAW)
    out = subprocess.run(
        [sys.executable, str(REPO / "bench" / "pyspy_summary.py"), str(path), "--rate", "10"],
        capture_output=True,
        text=True,
        check=True,
    )
    got = json.loads(out.stdout)
    rank, bench = got["processes"]
    assert (rank["pid"], rank["command"], rank["seconds"]) == (
        7,
        "python3 -m hpc_ppo.rank /r",
        11.0,
    )
    assert (bench["pid"], bench["seconds"]) == (8, 1.0)
    tracker, main = rank["threads"]  # the busiest first
    assert (tracker["thread"], tracker["seconds"], tracker["importing_s"]) == (
        "mlflow-tracker",
        6.0,
        6.0,
    )
    assert (main["thread"], main["seconds"], main["importing_s"]) == ("MainThread", 5.0, 3.0)
    inclusive = dict(map(tuple, main["inclusive"]))
    # line numbers dropped; a recursive function counted once per sample
    assert inclusive["main (hpc_ppo/rank.py)"] == 5.0
    assert inclusive["f (a.py)"] == 2.0
    assert dict(map(tuple, main["self"])) == {"<module> (vllm/__init__.py)": 3.0, "g (a.py)": 2.0}
