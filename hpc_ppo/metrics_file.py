"""metrics.jsonl, the run's own record of every logged metric (MLflow mirrors it).

    hpc-ppo run configs/tiny-cpu.yaml && tail -n 2 runs/*/metrics.jsonl     # one object a line

Each line: {"step": s, "time": unix seconds, metric: value, ...}. A hard kill can leave a
partial last line; `repair_jsonl` cuts it so the file stays appendable.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path

log = logging.getLogger(__name__)


def records(data: bytes, path: Path | None = None) -> Iterator[tuple[int, float | None, dict]]:
    """(step, time, metrics) of each metrics.jsonl line; a bad line is skipped, not fatal."""
    for n, line in enumerate(data.splitlines(), 1):
        try:
            rec = json.loads(line)
            step, t = int(rec.pop("step")), rec.pop("time", None)
        except (ValueError, KeyError, TypeError, AttributeError):
            if path:
                log.warning("%s:%d: not a metrics record, ignored", path, n)
            continue
        yield step, t, rec


def repair_jsonl(path: Path) -> dict[str, int]:
    """Cut a partial last line (hard kill mid-write); return each key's last logged step."""
    last: dict[str, int] = {}
    data = path.read_bytes() if path.exists() else b""
    end = data.rfind(b"\n") + 1
    if end < len(data):
        log.warning("%s: dropping a partial last line (%d bytes)", path, len(data) - end)
        with open(path, "r+b") as f:
            f.truncate(end)
    for step, _, rec in records(data[:end], path):
        last.update((k, max(step, last.get(k, step))) for k in rec)
    return last
