"""A short interpreter switch interval while start-up threads run beside the main thread.

    with short_switch_interval():      # trainer.py: tokenizer, tracking, models, restore, engine
        ...

During a rank's start-up a thread runs Python beside the main one: vLLM's import
(rollout/preload.py; the tracker's MLflow work has a process of its own, tracking.py). Each
copy, read or kernel launch of the main thread lets go of the interpreter; at Python's default
switch interval (5 ms) it then waits up to 5 ms to get it back from a busy thread.
`python bench/gil_convoy.py`: 3,000 short reads 0.11 s alone, 14.9 s beside a busy thread at
5 ms, 0.70 s at 0.1 ms (the busy thread 6 % slower). On the H200 host the build and restore
beside vLLM's import took as long at either interval (bench/start_overlap.py, sixth lease in
docs/PERFORMANCE.md): there the start-up is bound by the Python work itself, not the handover.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager

START_UP_SWITCH_INTERVAL_S = 1e-4


@contextmanager
def short_switch_interval(seconds: float = START_UP_SWITCH_INTERVAL_S) -> Iterator[None]:
    """`sys.setswitchinterval(seconds)` inside (never longer than the current one); the
    interval from before comes back on leaving, also on an error."""
    before = sys.getswitchinterval()
    sys.setswitchinterval(min(before, seconds))
    try:
        yield
    finally:
        sys.setswitchinterval(before)
