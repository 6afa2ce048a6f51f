"""Rank 0's tracking for one run: the MLflow tracker, what it records once, and where to look.

    hpc-ppo run configs/tiny-cpu.yaml     # prints `mlflow ui ...` and the run's URL at start

`start_tracking` starts the tracker (before the engine: MLflow's import overlaps it), with
TensorBoard event files when `tracking.tensorboard` is on. `record_run` logs the resolved
config as params, the run's tags (launcher, code version, Slurm job and restart count, launch
keys a resume changed), the resolved config.yaml as an artifact (`config/`) and
`mlflow.source.git.commit` when the package runs from a git checkout (the UI's "Source").
`mlflow_ui_hint`: a run URL that opens MLflow 3's classic pages (the run's metric charts), not
the GenAI traces page; the tracker's process marks the experiment as classic ML, so MLflow is
never imported in the rank.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from shlex import quote
from typing import Any

from hpc_ppo.config import RESUMABLE_KEYS, TrackingConfig, flatten
from hpc_ppo.provenance import PACKAGE_DIR, check_code_version, git_commit
from hpc_ppo.tracking import MetricsSink, Tracker, read_run_id

UI_PORT = 5000  # mlflow ui's default
EXPERIMENT_KIND = "mlflow.experimentKind"  # MLflow 3's UI reads it to pick the landing tab


def start_tracking(run_dir: Path, tracking: TrackingConfig) -> MetricsSink:
    """Rank 0's tracker, started early: its process imports MLflow and opens the store
    (seconds) while the engine starts, without taking this interpreter's lock; `record_run`
    adds the params once the checkpoint is restored."""
    tracker = Tracker(
        run_dir,
        tracking.uri,
        tracking.experiment,
        run_dir.name,
        run_id=read_run_id(run_dir),
        # MLflow 3's UI picks its landing tab from it; set unless somebody chose a kind
        experiment_tags={EXPERIMENT_KIND: "custom_model_development"},
    )
    if tracking.tensorboard:
        from hpc_ppo.tensorboard_sink import TensorBoardMirror, WithTensorBoard

        return WithTensorBoard(tracker, TensorBoardMirror(run_dir))
    return tracker


def record_run(tracker: MetricsSink, run_dir: Path, config: dict[str, Any]) -> None:
    """The run's params and tags (`run_params_and_tags`), the git commit tag and the config
    artifact."""
    params, tags = run_params_and_tags(run_dir, config)
    tracker.log_params(params)
    tracker.set_tags(tags)
    commit = git_commit()
    if commit:  # what the UI's "Source" shows: the checkout, and the commit beside it
        tracker.set_tags(
            {
                "mlflow.source.git.commit": commit,
                "mlflow.source.name": str(PACKAGE_DIR.parent),
                "mlflow.source.type": "LOCAL",
            }
        )
    tracker.log_artifact(run_dir / "config.yaml", "config")


def mlflow_ui_hint(tracker: MetricsSink, timeout_s: float = 15) -> tuple[str, str]:
    """(the `mlflow ui` command for the run's store, the URL of the run's page there).

    Waits up to `timeout_s` for the tracker's first contact with the store (the run id and
    its experiment).
    """
    uri = getattr(tracker, "uri", None)  # a Tracker's; None on ranks other than 0
    if uri is None:
        return "", ""
    served = uri.startswith(("http://", "https://"))  # a tracking server is its own UI
    command = f"(served at {uri})" if served else f"mlflow ui --backend-store-uri {quote(uri)}"
    base = uri.rstrip("/") if served else f"http://127.0.0.1:{UI_PORT}"
    flushed = tracker.flush(timeout_s)
    exp_id = getattr(tracker, "experiment_id", None)  # known with the run (a Tracker's)
    if not flushed or tracker.run_id is None or exp_id is None:
        return command, f"{base} (the run id is not known yet: MLflow did not answer)"
    # MLflow 3.17's UI picks GenAI or classic ("Model training") pages from this query
    # parameter (else from the browser's last choice, GenAI at first); earlier 3.x releases
    # from the experiment's kind tag (start_tracking's experiment_tags).
    page = f"#/experiments/{exp_id}/runs/{tracker.run_id}/model-metrics"
    return command, f"{base}/{page}?workflowType=machine_learning"


def run_params_and_tags(run_dir: Path, config: dict[str, Any]) -> tuple[dict, dict[str, str]]:
    """(params, tags) of a run: params are the resolved config.

    Launch keys a resumed run may change (RESUMABLE_KEYS) keep their first value as the param
    (MLflow params are immutable) and carry the current one as a `resumed.<key>` tag.
    """
    params = flatten(config)
    first_path = run_dir / "params.json"
    first = json.loads(first_path.read_text()) if first_path.is_file() else {}
    tags = {
        "launcher": "slurm" if "SLURM_JOB_ID" in os.environ else "local",
        "code.version": check_code_version(run_dir),
    }
    for key in RESUMABLE_KEYS:
        # Every resumed job tags all of them, changed or not: MLflow keeps tags, so a tag only
        # set on change went stale when a later resume went back to the first value
        # (2 -> 1 -> 2 ranks left resumed.trainer.nprocs=1).
        if key in first:
            tags[f"resumed.{key}"], params[key] = params[key], first[key]
    if "SLURM_JOB_ID" in os.environ:
        tags["slurm.job_id"] = os.environ["SLURM_JOB_ID"]
        tags["slurm.restart_count"] = os.environ.get("SLURM_RESTART_COUNT", "0")
    return params, tags
