"""Chosen steps under torch.profiler: where a step's GPU and CPU time goes, op by op.

    hpc-ppo run configs/gpu-step.yaml trainer.profile_steps=[2]
    # -> RUN_DIR/profile/step_2.rank0.txt (operator tables), step_2.rank0.json (Chrome trace)

Phase timers (time/*) say which stage is slow; this says why (a kernel, a device sync, Python
overhead between launches). The table lists the top operators by self device time and by self
CPU time; the trace opens in https://ui.perfetto.dev. The step's phases appear in both as
`phase/<name>` ranges (metrics.PhaseTimer). A profiled step runs slower: leave its time/*
metrics out of comparisons.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path

import torch

log = logging.getLogger(__name__)

TOP_OPS = 40


@contextlib.contextmanager
def profiled(enabled: bool, out_dir: Path, step: int, rank: int) -> Iterator[None]:
    """Profile the enclosed step when `enabled`; the files are written only if it completes."""
    if not enabled:
        yield
        return
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU]
    if torch.cuda.is_available():
        activities.append(ProfilerActivity.CUDA)
    with profile(activities=activities) as prof:
        yield
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = out_dir / f"step_{step}.rank{rank}"
    Path(f"{stem}.txt").write_text(operator_tables(prof, len(activities) > 1))
    prof.export_chrome_trace(f"{stem}.json")
    log.info("profile of step %d written to %s.txt and .json", step, stem)


def operator_tables(prof: torch.profiler.profile, device: bool) -> str:
    """The top operators by self device time (when a GPU was profiled) and by self CPU time."""
    events = prof.key_averages()
    parts = []
    if device:
        parts.append("# by self device time\n")
        parts.append(events.table(sort_by="self_device_time_total", row_limit=TOP_OPS))
    parts.append("\n# by self CPU time\n")
    parts.append(events.table(sort_by="self_cpu_time_total", row_limit=TOP_OPS))
    return "".join(parts)
