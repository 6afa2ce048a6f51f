"""Tracker.log_artifact: a run-folder file sent to MLflow once, and after a restart if the
job that logged it died before sending it (tracking.py).

Run: python -m pytest tests/test_tracking_artifacts.py -q
"""

from __future__ import annotations

import json

from mlflow import MlflowClient

from hpc_ppo.tracking import Tracker


def listed(run_dir, run_id) -> list[str]:
    client = MlflowClient(tracking_uri=f"sqlite:///{run_dir}/mlflow.db")
    return sorted(f.path for f in client.list_artifacts(run_id, "val"))


def test_an_artifact_is_sent_once_and_an_unsent_one_after_a_restart(tmp_path):
    (tmp_path / "val").mkdir()
    for k in (0, 5):
        (tmp_path / "val" / f"step_{k}.jsonl").write_text(f'{{"step": {k}}}\n')
    tracker = Tracker(tmp_path, None, "t", "r")
    tracker.log_artifact(tmp_path / "val" / "step_0.jsonl", "val")
    tracker.log_artifact(tmp_path / "val" / "step_0.jsonl", "val")  # once
    assert tracker.close()
    run_id = tracker.run_id
    assert listed(tmp_path, run_id) == ["val/step_0.jsonl"]
    # A job killed after recording step_5 but before sending it: the next job sends it.
    record = json.loads((tmp_path / "artifacts.json").read_text())
    assert record == [["val/step_0.jsonl", "val"]]
    record.append(["val/step_5.jsonl", "val"])
    (tmp_path / "artifacts.json").write_text(json.dumps(record))
    again = Tracker(tmp_path, None, "t", "r")
    assert again.close() and again.run_id == run_id
    assert listed(tmp_path, run_id) == ["val/step_0.jsonl", "val/step_5.jsonl"]
