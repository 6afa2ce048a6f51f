"""tensorboard_sink.py: event files follow metrics.jsonl, once per (tag, step) across restarts.

Run: python -m pytest tests/test_tensorboard_sink.py -q
"""

from __future__ import annotations

import json
from pathlib import Path

from hpc_ppo.tensorboard_sink import TB_DIR, TensorBoardMirror, logged_steps


def append(run_dir: Path, step: int, **values: float | None) -> None:
    with open(run_dir / "metrics.jsonl", "a") as f:
        f.write(json.dumps({"step": step, "time": 1.0 + step, **values}) + "\n")


def scalars(run_dir: Path) -> dict[str, list[int]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir / TB_DIR), purge_orphaned_data=False).Reload()
    return {tag: [e.step for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_a_restart_writes_only_what_the_events_lack(tmp_path: Path) -> None:
    append(tmp_path, 0, a=1.0, b=None)  # null: not finite, never written
    first = TensorBoardMirror(tmp_path)
    first.sync()
    append(tmp_path, 1, a=2.0)
    first.sync()
    first.close()
    # The job died after metrics.jsonl got step 2 but before the events did.
    append(tmp_path, 2, a=3.0, b=4.0)
    assert logged_steps(tmp_path / TB_DIR) == {"a": 1}
    second = TensorBoardMirror(tmp_path)
    second.sync()
    second.sync()  # nothing new: nothing written
    append(tmp_path, 2, a=9.0)  # a step redone after a crash: the first value stays
    append(tmp_path, 3, a=5.0)
    second.close()
    assert scalars(tmp_path) == {"a": [0, 1, 2, 3], "b": [2]}


def test_no_metrics_no_events_file(tmp_path: Path) -> None:
    TensorBoardMirror(tmp_path).close()
    assert not (tmp_path / TB_DIR).exists()
