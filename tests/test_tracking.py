"""Tracker against a real MLflow sqlite store; only the dead-server case uses a fake (a closed port).

Run: pytest tests/test_tracking.py -q
"""

from __future__ import annotations

import logging
import math
import os
import time
from pathlib import Path

import pytest
from helpers import metrics, mlflow_client

from hpc_ppo.errors import ConfigError
from hpc_ppo.tracking import MetricsSink, NullTracker, Tracker, read_run_id


def _history(run_dir: Path, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in mlflow_client(run_dir).get_metric_history(run_id, key))


def _run(run_dir: Path, steps: range, run_id: str | None = None, **kw) -> Tracker:
    """A tracker that logged `steps` (loss = step, reward/mean = 10 * step) and closed."""
    tracker = Tracker(run_dir, None, "exp", "run", run_id=run_id, **kw)
    tracker.log_params({"optim.lr": "1e-06", "seed": "0"})
    for s in steps:
        tracker.log_metrics(s, {"loss": float(s), "reward/mean": 10.0 * s})
    assert tracker.close(timeout_s=60)
    return tracker


def test_new_run_logs_params_and_each_step_once(tmp_path: Path) -> None:
    tracker = _run(tmp_path, range(3), tags={"slurm_job_id": "42"})
    assert tracker.run_id is not None and read_run_id(tmp_path) == tracker.run_id
    run = mlflow_client(tmp_path).get_run(tracker.run_id)
    assert run.data.params == {"optim.lr": "1e-06", "seed": "0"}
    assert run.data.tags["slurm_job_id"] == "42"
    assert run.info.status == "FINISHED"
    assert _history(tmp_path, tracker.run_id, "loss") == [(0, 0.0), (1, 1.0), (2, 2.0)]
    assert _history(tmp_path, tracker.run_id, "reward/mean") == [(0, 0.0), (1, 10.0), (2, 20.0)]
    assert [r["step"] for r in metrics(tmp_path)] == [0, 1, 2]


def test_reattach_logs_each_step_exactly_once(tmp_path: Path) -> None:
    first = _run(tmp_path, range(3), tags={"restart": "0"})
    tracker = Tracker(tmp_path, None, "exp", "run", run_id=read_run_id(tmp_path))
    tracker.set_tags({"restart": "1"})
    tracker.log_params({"optim.lr": "1e-06", "seed": "0"})  # unchanged: fine
    for s in range(2, 6):  # step 2 is redone after a crash, with a different value
        tracker.log_metrics(s, {"loss": -1.0 if s == 2 else float(s)})
    tracker.log_metrics(5, {"loss": 99.0})  # twice in one job
    assert tracker.close(timeout_s=60)
    assert tracker.run_id == first.run_id
    assert _history(tmp_path, first.run_id, "loss") == [(s, float(s)) for s in range(6)]
    lines = metrics(tmp_path)
    assert [r["step"] for r in lines] == list(range(6))
    assert [r["loss"] for r in lines] == [float(s) for s in range(6)]
    assert mlflow_client(tmp_path).get_run(first.run_id).data.tags["restart"] == "1"


def test_run_id_is_found_in_run_dir_without_being_passed(tmp_path: Path) -> None:
    first = _run(tmp_path, range(2))
    second = _run(tmp_path, range(1, 3))
    assert second.run_id == first.run_id
    assert _history(tmp_path, first.run_id, "loss") == [(0, 0.0), (1, 1.0), (2, 2.0)]


def test_steps_mlflow_has_are_not_resent_when_jsonl_lacks_them(tmp_path: Path) -> None:
    first = _run(tmp_path, range(3))
    (tmp_path / "metrics.jsonl").unlink()  # e.g. lost with a node-local disk
    tracker = Tracker(tmp_path, None, "exp", "run")
    for s in range(1, 4):
        tracker.log_metrics(s, {"loss": -float(s)})
    assert tracker.close(timeout_s=60)
    assert _history(tmp_path, first.run_id, "loss") == [(0, 0.0), (1, 1.0), (2, 2.0), (3, -3.0)]
    assert [r["step"] for r in metrics(tmp_path)] == [1, 2, 3]


def test_changed_param_on_reattach_raises_naming_key(tmp_path: Path) -> None:
    _run(tmp_path, range(1))
    tracker = Tracker(tmp_path, None, "exp", "run", run_id=read_run_id(tmp_path))
    try:
        with pytest.raises(
            ConfigError, match=r"optim\.lr=2e-06 but this run started with optim\.lr=1e-06"
        ):
            tracker.log_params({"optim.lr": "2e-06", "new": "x"})
        tracker.log_params({"new": "x"})  # a param the run never had is fine
    finally:
        assert tracker.close(timeout_s=60)
    params = mlflow_client(tmp_path).get_run(tracker.run_id).data.params
    assert params == {"optim.lr": "1e-06", "seed": "0", "new": "x"}


def test_partial_last_line_is_truncated(tmp_path: Path) -> None:
    first = _run(tmp_path, range(2))
    with open(tmp_path / "metrics.jsonl", "ab") as f:
        f.write(b'{"step": 2, "loss": 2.')  # hard kill mid-write
    _run(tmp_path, range(2, 4))
    assert [r["step"] for r in metrics(tmp_path)] == [0, 1, 2, 3]
    assert _history(tmp_path, first.run_id, "loss") == [(s, float(s)) for s in range(4)]


def test_non_finite_is_null_in_jsonl_absent_from_mlflow_and_warned_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    tracker = Tracker(tmp_path, None, "exp", "run")
    assert isinstance(tracker, MetricsSink)
    with pytest.raises(ValueError, match="reserved"):
        tracker.log_metrics(0, {"time": 1.0})
    with caplog.at_level(logging.WARNING, logger="hpc_ppo.tracking"):
        tracker.log_metrics(0, {"loss": math.nan, "kl": 0.5})
        tracker.log_metrics(1, {"loss": 1.0, "kl": math.inf})
        tracker.log_metrics(2, {"loss": math.nan})
    assert tracker.close(timeout_s=60)
    rows = [(r.get("loss"), r.get("kl")) for r in metrics(tmp_path)]
    assert rows == [(None, 0.5), (1.0, None), (None, None)]
    assert _history(tmp_path, tracker.run_id, "loss") == [(1, 1.0)]
    assert _history(tmp_path, tracker.run_id, "kl") == [(0, 0.5)]
    assert sum("loss is nan" in r.getMessage() for r in caplog.records) == 1


def test_dead_server_never_blocks_and_jsonl_is_backfilled_later(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "1")
    t0 = time.monotonic()
    tracker = Tracker(tmp_path, "http://127.0.0.1:1", "exp", "run")  # nothing listens on port 1
    tracker.log_params({"seed": "0"})
    for s in range(3):
        tracker.log_metrics(s, {"loss": float(s)})
    assert time.monotonic() - t0 < 1.0
    assert not tracker.flush(timeout_s=0.5)
    t1 = time.monotonic()
    assert not tracker.close(timeout_s=2)
    assert time.monotonic() - t1 < 5.0
    # Its process ended with close(), instead of retrying forever beside the rank.
    assert tracker._proc.poll() is not None
    assert tracker.run_id is None and read_run_id(tmp_path) is None
    assert [r["step"] for r in metrics(tmp_path)] == [0, 1, 2]
    # The next job reaches a store: it creates the run and sends what metrics.jsonl holds.
    monkeypatch.undo()
    later = _run(tmp_path, range(2, 4))
    assert _history(tmp_path, later.run_id, "loss") == [(s, float(s)) for s in range(4)]
    assert mlflow_client(tmp_path).get_run(later.run_id).data.params["seed"] == "0"


def test_null_tracker_is_a_metrics_sink() -> None:
    null = NullTracker()
    assert isinstance(null, MetricsSink) and null.run_id is None
    null.log_metrics(0, {"loss": 1.0})
    assert null.flush() and null.close()


def test_sqlite_store_appears_complete_or_not_at_all(tmp_path):
    """The schema is built under a temporary name and renamed: a kill mid-migration (seen to
    break the store for good) leaves no mlflow.db, only a stray temporary file."""
    from mlflow import MlflowClient

    from hpc_ppo.mlflow_store import create_sqlite_store

    stray = tmp_path / ".mlflow.db.999.init"
    stray.write_bytes(b"half a schema")  # what a killed creation leaves behind
    store = tmp_path / "mlflow.db"
    create_sqlite_store(store)
    assert store.is_file()
    assert not list(tmp_path.glob(f".mlflow.db.{os.getpid()}.init"))
    client = MlflowClient(tracking_uri=f"sqlite:///{store}")
    exp = client.create_experiment("x")
    assert client.get_experiment(exp).name == "x"
    before = store.stat().st_mtime_ns
    create_sqlite_store(store)  # an existing store is left alone
    assert store.stat().st_mtime_ns == before


def test_one_rejected_metric_name_drops_only_itself(tmp_path: Path, caplog) -> None:
    """MLflow rejects a whole batch for one invalid name; the others of the step still go."""
    tracker = Tracker(tmp_path, None, "exp", "run")
    with caplog.at_level(logging.ERROR):
        tracker.log_metrics(0, {"loss": 1.0, "bad@name": 2.0, "reward/mean": 3.0})
        tracker.log_metrics(1, {"loss": 4.0})
        assert tracker.close(timeout_s=60)
    assert _history(tmp_path, tracker.run_id, "loss") == [(0, 1.0), (1, 4.0)]
    assert _history(tmp_path, tracker.run_id, "reward/mean") == [(0, 3.0)]
    assert "MLflow rejected metrics bad@name, dropped" in caplog.text
    assert metrics(tmp_path)[0]["bad@name"] == 2.0  # the run folder keeps it
