"""What rank 0 prints for a person: a start block, then one line per step.

    hpc-ppo run configs/tiny-cpu.yaml > log 2>&1; grep ' step ' log     # one line a step

A run is watched through its Slurm log (`tail -f`, `grep`), so every step is one whole log
record (also in RUN_DIR/run.log): step/total, reward, KL, entropy, response length, seconds
per step, ETA and, under Slurm, the time left before the job's limit. A progress bar only
when stderr is a terminal; log records are then written above it (tqdm's logging redirect),
never onto its line. A redirected bar was `\\r` updates glued to the records.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import os
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from importlib import metadata
from typing import Any

log = logging.getLogger("hpc_ppo.progress")


def slurm_end_time(environ: Mapping[str, str] | None = None) -> float | None:
    """The job's end (unix seconds) by its time limit, asked of squeue once; None outside
    Slurm, without a limit, or when squeue does not answer."""
    environ = os.environ if environ is None else environ
    job = environ.get("SLURM_JOB_ID")
    if not job:
        return None
    try:
        out = subprocess.run(
            ["squeue", "-h", "-j", job, "-o", "%e"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        return datetime.datetime.fromisoformat(out).timestamp()
    except (OSError, subprocess.SubprocessError, ValueError):  # N/A, UNLIMITED, no squeue
        return None


def _hms(seconds: float) -> str:
    return str(datetime.timedelta(seconds=max(0, round(seconds))))


class StepLog:
    """One log record per step on rank 0; a tqdm bar as well when stderr is a terminal."""

    def __init__(self, start: int, total: int, enabled: bool = True) -> None:
        self.start, self.total, self.enabled = start, total, enabled
        self.end_time = slurm_end_time() if enabled else None  # once: squeue is a server call
        self.t0 = time.monotonic()
        self.bar: Any = None

    @contextlib.contextmanager
    def active(self) -> Iterator[None]:
        """While training: on a terminal, a bar with the records written above it."""
        self.t0 = time.monotonic()  # the ETA counts training only, not the start before it
        if not (self.enabled and sys.stderr.isatty()):
            yield
            return
        from tqdm import tqdm
        from tqdm.contrib.logging import logging_redirect_tqdm

        # Made here, not earlier: a record logged while a bar is drawn would share its line.
        with logging_redirect_tqdm():
            self.bar = tqdm(
                total=self.total, initial=self.start, desc="ppo", unit="step", mininterval=1.0
            )
            try:
                yield
            finally:
                self.bar.close()

    def step(self, done: int, m: Mapping[str, float]) -> None:
        """Log the line for the step that made `done` steps complete."""
        if not self.enabled:
            return
        per_step = (time.monotonic() - self.t0) / max(done - self.start, 1)
        parts = [
            f"step {done}/{self.total}",
            f"reward {m.get('reward/mean', float('nan')):.4f}",
            f"kl {m.get('actor/kl_ref', 0.0):.4g}",
            f"entropy {m.get('actor/entropy', float('nan')):.4g}",
            f"len {m.get('response/length_mean', float('nan')):.1f}",
            f"{m.get('time/step', per_step):.2f} s/step",
            f"eta {_hms(per_step * (self.total - done))}",
        ]
        if self.end_time is not None:
            parts.append(f"slurm left {_hms(self.end_time - time.time())}")
        log.info(" | ".join(parts))
        if self.bar is not None:
            self.bar.update(1)


def versions() -> str:
    """torch, transformers and (when installed) vllm versions, from package metadata only:
    importing vllm would take seconds and touch the GPU."""
    out = []
    for name in ("hpc-ppo", "torch", "transformers", "vllm", "mlflow"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            out.append(f"{name} {metadata.version(name)}")
    return ", ".join(out)


def world_line(world: int, device_type: str, environ: Mapping[str, str] | None = None) -> str:
    environ = os.environ if environ is None else environ
    nodes = environ.get("SLURM_JOB_NUM_NODES") or environ.get("SLURM_NNODES") or "1"
    gpus = world if device_type == "cuda" else 0
    return f"{world} rank(s) on {nodes} node(s), {gpus} GPU(s), device {device_type}"


def start_block(lines: Mapping[str, str]) -> None:
    """The run's facts, one block at start (rank 0)."""
    width = max(len(k) for k in lines)
    body = "\n".join(f"  {k.ljust(width)}  {v}" for k, v in lines.items())
    log.info("hpc-ppo run\n%s", body)


def count_parameters(*models: object) -> str:
    """Parameters of each model (full sizes: an FSDP DTensor reports its global shape)."""
    parts = []
    for name, model in zip(("policy", "critic"), models, strict=False):
        if model is not None:
            n = sum(p.numel() for p in model.parameters())  # type: ignore[attr-defined]
            parts.append(f"{name} {n / 1e6:.2f} M" if n < 1e9 else f"{name} {n / 1e9:.2f} B")
    return ", ".join(parts)
