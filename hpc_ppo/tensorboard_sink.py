"""TensorBoard event files in the run folder, mirrored from metrics.jsonl (`tracking.tensorboard`).

    hpc-ppo run configs/tiny-cpu.yaml tracking.tensorboard=true
    tensorboard --logdir runs/                # on a login node: every run folder side by side

Like the MLflow mirror (tracking.py), the events follow metrics.jsonl, the run's record, so a
value is written once per (tag, step) across requeues: on start the steps already in
RUN_DIR/tensorboard/ are read back (a record torn by a kill does not read back, so it is
written again), and metrics.jsonl lines beyond them are written; then every step's new lines.
Each job writes a new events file (SummaryWriter's naming); TensorBoard merges them.
Written in rank 0's training thread: SummaryWriter queues to its own writer thread.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from hpc_ppo.metrics_file import records
from hpc_ppo.tracking import Status, Tracker

log = logging.getLogger(__name__)
TB_DIR = "tensorboard"


def logged_steps(folder: Path) -> dict[str, int]:
    """The last step of each scalar tag in the event files under `folder`."""
    from tensorboard.backend.event_processing.event_file_loader import LegacyEventFileLoader

    last: dict[str, int] = {}
    for path in sorted(folder.glob("events.out.tfevents.*")):
        try:
            for event in LegacyEventFileLoader(str(path)).Load():
                for value in event.summary.value:
                    last[value.tag] = max(event.step, last.get(value.tag, event.step))
        except Exception as e:  # a torn file: what was read counts, the rest is re-sent
            log.warning(
                "%s: unreadable after some records (%s); the rest is written again", path, e
            )
    return last


class TensorBoardMirror:
    """Writes the scalars metrics.jsonl holds and the event files do not."""

    def __init__(self, run_dir: Path) -> None:
        self.folder = run_dir / TB_DIR
        self.jsonl = run_dir / "metrics.jsonl"
        self.last = logged_steps(self.folder)
        self.offset = 0  # bytes of metrics.jsonl read so far
        self.writer: Any = None  # made on the first value: no empty events file per restart

    def sync(self) -> None:
        if not self.jsonl.is_file():
            return
        with open(self.jsonl, "rb") as f:
            f.seek(self.offset)
            data = f.read()
        data = data[: data.rfind(b"\n") + 1]  # whole lines only
        self.offset += len(data)
        wrote = False
        for step, t, rec in records(data):
            for tag, value in rec.items():
                if value is None or step <= self.last.get(tag, -1):
                    continue
                if self.writer is None:
                    from torch.utils.tensorboard import SummaryWriter

                    self.writer = SummaryWriter(log_dir=str(self.folder))
                self.writer.add_scalar(tag, value, step, walltime=t)
                self.last[tag], wrote = step, True
        if wrote:
            self.writer.flush()

    def close(self) -> None:
        self.sync()
        if self.writer is not None:
            self.writer.close()


class WithTensorBoard:
    """A MetricsSink that also mirrors every logged metric to TensorBoard."""

    def __init__(self, inner: Tracker, mirror: TensorBoardMirror) -> None:
        self.inner, self.mirror = inner, mirror
        mirror.sync()  # what an earlier job logged and did not write here

    @property
    def run_id(self) -> str | None:
        return self.inner.run_id

    @property
    def uri(self) -> str:
        return self.inner.uri

    @property
    def experiment_id(self) -> str | None:
        return self.inner.experiment_id

    def log_params(self, params: dict[str, Any]) -> None:
        self.inner.log_params(params)

    def set_tags(self, tags: dict[str, str]) -> None:
        self.inner.set_tags(tags)

    def log_metrics(self, step: int, metrics: dict[str, float]) -> None:
        self.inner.log_metrics(step, metrics)
        self.mirror.sync()

    def logged(self, key: str, step: int) -> bool:
        return self.inner.logged(key, step)

    def log_artifact(self, path: Path, artifact_dir: str) -> None:
        self.inner.log_artifact(path, artifact_dir)

    def flush(self, timeout_s: float = 60) -> bool:
        return self.inner.flush(timeout_s)

    def close(self, status: Status = "FINISHED", timeout_s: float = 60) -> bool:
        try:
            self.mirror.close()
        except Exception as e:  # TensorBoard is a view; the run's end must not fail on it
            log.error("TensorBoard events not closed: %s", e)
        return self.inner.close(status, timeout_s)
