"""tracking.uri=sqlite:///<shared>/mlflow.db: several runs side by side in one MLflow store.

Run: python -m pytest tests/test_shared_store.py -q
"""

from __future__ import annotations

import threading
from pathlib import Path

from mlflow import MlflowClient

from hpc_ppo.tracking import Tracker, read_run_id


def test_two_runs_in_one_sqlite_store_stay_separate(tmp_path: Path) -> None:
    store = tmp_path / "shared" / "mlflow.db"  # its folder does not exist yet
    uri = f"sqlite:///{store}"
    dirs = [tmp_path / "a", tmp_path / "b"]
    trackers: list[Tracker] = []

    def start(run_dir: Path) -> None:  # both start at once: one store, created once
        trackers.append(Tracker(run_dir, uri, "shared-exp", run_dir.name))

    threads = [threading.Thread(target=start, args=(d,)) for d in dirs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i, tracker in enumerate(sorted(trackers, key=lambda t: t.run_dir.name)):
        tracker.log_params({"which": tracker.run_name})
        for step in range(3):
            tracker.log_metrics(step, {"reward/mean": 10 * i + step})
        config = tracker.run_dir / "config.yaml"
        config.write_text(f"run: {tracker.run_name}\n")
        tracker.log_artifact(config, "config")
        assert tracker.close()

    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("shared-exp")
    assert exp.artifact_location == (store.parent / "mlartifacts").as_uri()  # not ./mlruns
    runs = {r.info.run_name: r for r in client.search_runs([exp.experiment_id])}
    assert set(runs) == {"a", "b"}
    for i, name in enumerate(("a", "b")):
        run = runs[name]
        assert read_run_id(tmp_path / name) == run.info.run_id
        assert run.data.params == {"which": name}
        history = client.get_metric_history(run.info.run_id, "reward/mean")
        assert sorted((m.step, m.value) for m in history) == [(s, 10 * i + s) for s in range(3)]
        local = client.download_artifacts(run.info.run_id, "config/config.yaml", str(tmp_path))
        assert Path(local).read_text() == f"run: {name}\n"
    assert not (tmp_path / "a" / "mlflow.db").exists()  # the shared store, not a run's own
