"""Trainer start-up: rank 0 opens tracking before the engine starts (MLflow's import and store
overlap the engine's start), and a start that fails after that leaves the MLflow run FAILED."""

from __future__ import annotations

import pytest
import torch
from helpers import TINY, gloo_rank, mlflow_run

from hpc_ppo import trainer as trainer_module
from hpc_ppo.config import load_config, save_config


def test_tracking_opens_first_and_a_failed_engine_start_marks_the_run_failed(tmp_path, monkeypatch):
    cfg = load_config(TINY)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    save_config(cfg, run_dir / "config.yaml")
    events = []
    start_tracking = trainer_module.start_tracking

    def tracking(*args, **kwargs):
        events.append("tracking")
        return start_tracking(*args, **kwargs)

    def broken_engine(*args, **kwargs):
        events.append("engine")
        raise RuntimeError("no GPU memory for the engine")

    monkeypatch.setattr(trainer_module, "start_tracking", tracking)
    monkeypatch.setattr(trainer_module, "make_engine", broken_engine)
    with gloo_rank(), pytest.raises(RuntimeError, match="no GPU memory"):
        trainer_module.Trainer(cfg, run_dir, 0, 1, torch.device("cpu"))
    assert events == ["tracking", "engine"]
    _, run = mlflow_run(run_dir)
    assert run.info.status == "FAILED"
