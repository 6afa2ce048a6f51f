"""Why the trainer's start-up shortens the interpreter's switch interval (switch_interval.py).

    python bench/gil_convoy.py                 # any machine, ~20 s; prints one JSON object

The main thread does what a model build or a checkpoint restore does: many short calls that
let go of the interpreter (here 3,000 reads of 1 MiB from a cached file, with a little Python
between them). A second thread runs pure Python, as an import does. Each time the main thread
lets go, the other holds the interpreter until the switch interval runs out (Python's
default: 5 ms), so 3,000 short reads cost up to 15 s. Each setting runs in a new process.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time

READS = 3000
PIECE = 1 << 20


def one(path: str, interval_s: float, busy: bool) -> dict:
    """The main thread's reads, with (`busy`) or without the pure-Python thread beside it."""
    sys.setswitchinterval(interval_s)
    fd = os.open(path, os.O_RDONLY)
    pieces = os.fstat(fd).st_size // PIECE
    stop = threading.Event()
    spins = [0]

    def spin() -> None:
        while not stop.is_set():
            spins[0] += sum(range(200)) > 0

    thread = threading.Thread(target=spin)
    if busy:
        thread.start()
        time.sleep(0.05)
    start = time.perf_counter()
    for i in range(READS):
        os.pread(fd, PIECE, (i % pieces) * PIECE)
        _ = [j for j in range(300)]
    main_s = time.perf_counter() - start
    stop.set()
    if busy:
        thread.join()
    return {
        "switch_interval_ms": interval_s * 1e3,
        "busy_thread": busy,
        "main_s": round(main_s, 2),
        "busy_thread_loops_per_s": round(spins[0] / main_s) if busy else None,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--one", nargs=3, metavar=("FILE", "INTERVAL_S", "BUSY"), help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.one:
        print(json.dumps(one(a.one[0], float(a.one[1]), a.one[2] == "1")))
        return
    with tempfile.NamedTemporaryFile(prefix="hpcppo-convoy-") as f:
        f.write(os.urandom(64 * PIECE))
        f.flush()
        runs = []
        for interval_s, busy in ((0.005, False), (0.005, True), (0.001, True), (0.0001, True)):
            cmd = [sys.executable, __file__, "--one", f.name, str(interval_s), str(int(busy))]
            out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
            runs.append(json.loads(out))
    print(json.dumps({"bench": "gil_convoy", "reads": READS, "runs": runs}, indent=1))


if __name__ == "__main__":
    main()
