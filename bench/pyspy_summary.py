"""Where a start-up's interpreter time goes, from a py-spy recording: seconds per process and
thread, the part spent importing, and the heaviest functions.

    py-spy record --nonblocking --gil --threads --subprocesses -r 100 --format raw -o gil.txt \
        -- python3 bench/step.py --resume RUN --steps 1
    python bench/pyspy_summary.py gil.txt --rate 100          # prints one JSON object

With `--gil` py-spy samples only the thread holding the interpreter lock, so a thread's
seconds are its share of the one interpreter the rank's start-up runs on (what vLLM's import,
MLflow and the model build compete for); with `--idle` they are wall time. Frames are counted
by function and file (line numbers dropped); `inclusive` counts a function once per sample
wherever it is on the stack, `self` only when it is the innermost frame.
"""

from __future__ import annotations

import argparse
import json
import re
from collections import Counter, defaultdict
from pathlib import Path

# process PID:"command";[process PID:"command";...]thread (TID): NAME;frame;frame;... COUNT
# (with --subprocesses a child's samples carry the chain of processes from the root)
_HEAD = re.compile(r'^(?P<chain>process \d+:".*?");thread \((?P<tid>\w+)\): (?P<rest>.*)$')
_PROCESS = re.compile(r'process (?P<pid>\d+):"(?P<cmd>.*?)"(?:;|$)')
_LINE_NO = re.compile(r":\d+\)$")
IMPORTING = "_find_and_load (<frozen importlib._bootstrap>)"


def parse(text: str) -> dict[tuple[str, str], dict[str, list[tuple[list[str], int]]]]:
    """{(pid, command): {thread name: [(frames root first, samples)]}} of a raw recording."""
    out: dict = defaultdict(lambda: defaultdict(list))
    for line in text.splitlines():
        m = _HEAD.match(line)
        if not m:
            continue  # a command line broken over lines: its first line is enough
        *_, last = _PROCESS.finditer(m["chain"])  # the process the thread belongs to
        stack, _, count = m["rest"].rpartition(" ")
        thread, *frames = stack.split(";")
        out[(last["pid"], last["cmd"])][thread.strip()].append(
            ([_LINE_NO.sub(")", f) for f in frames], int(count))
        )
    return out


def summarize(text: str, rate_hz: float, top: int = 30) -> dict:
    processes = []
    for (pid, cmd), threads in parse(text).items():
        rows = []
        for name, stacks in threads.items():
            inclusive: Counter[str] = Counter()
            innermost: Counter[str] = Counter()
            samples = importing = 0
            for frames, n in stacks:
                samples += n
                for f in set(frames):
                    inclusive[f] += n
                if frames:
                    innermost[frames[-1]] += n
                importing += n if IMPORTING in frames else 0
            rows.append(
                {
                    "thread": name,
                    "seconds": round(samples / rate_hz, 2),
                    "importing_s": round(importing / rate_hz, 2),
                    "inclusive": [
                        [f, round(n / rate_hz, 2)] for f, n in inclusive.most_common(top)
                    ],
                    "self": [[f, round(n / rate_hz, 2)] for f, n in innermost.most_common(top)],
                }
            )
        rows.sort(key=lambda r: -r["seconds"])
        total = round(sum(r["seconds"] for r in rows), 2)
        processes.append({"pid": int(pid), "command": cmd, "seconds": total, "threads": rows})
    processes.sort(key=lambda p: -p["seconds"])
    return {"bench": "pyspy_summary", "rate_hz": rate_hz, "processes": processes}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("recording", type=Path, help="py-spy record --format raw output")
    p.add_argument("--rate", type=float, default=100.0, help="the recording's -r (samples/s)")
    p.add_argument("--top", type=int, default=30, help="functions listed per thread")
    a = p.parse_args()
    print(json.dumps(summarize(a.recording.read_text(), a.rate, a.top), indent=1))


if __name__ == "__main__":
    main()
