"""Trainer start-up: rank 0 opens tracking before the engine starts (MLflow's import and store
overlap the engine's start), and a start that fails after that leaves the MLflow run FAILED;
the engine starts after the models and the restore, and its re-seeding is undone; the start-up
runs at a short switch interval, and the caller's comes back."""

from __future__ import annotations

import random
import sys

import numpy as np
import pytest
import torch
from helpers import TINY, gloo_rank, mlflow_run

from hpc_ppo import trainer as trainer_module
from hpc_ppo.config import load_config, save_config
from hpc_ppo.switch_interval import START_UP_SWITCH_INTERVAL_S


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
        events.append(f"engine at {sys.getswitchinterval():g} s")
        raise RuntimeError("no GPU memory for the engine")

    build_models = trainer_module.build_models

    def models(*args, **kwargs):
        events.append("models")
        return build_models(*args, **kwargs)

    monkeypatch.setattr(trainer_module, "start_tracking", tracking)
    monkeypatch.setattr(trainer_module, "build_models", models)
    monkeypatch.setattr(trainer_module, "make_engine", broken_engine)
    before = sys.getswitchinterval()
    with gloo_rank(), pytest.raises(RuntimeError, match="no GPU memory"):
        trainer_module.Trainer(cfg, run_dir, 0, 1, torch.device("cpu"))
    # The start-up ran at the short switch interval (switch_interval.py), and it is over.
    assert events == ["tracking", "models", f"engine at {START_UP_SWITCH_INTERVAL_S:g} s"]
    assert sys.getswitchinterval() == before
    _, run = mlflow_run(run_dir)
    assert run.info.status == "FAILED"


def _draws_after_start(tmp_path, name: str, reseeding_engine: bool, monkeypatch) -> list[float]:
    """The loop's first random draws after a Trainer started (its engine may re-seed, as vLLM
    does when it starts)."""
    cfg = load_config(TINY)
    run_dir = tmp_path / name
    run_dir.mkdir()
    save_config(cfg, run_dir / "config.yaml")
    make_engine = trainer_module.make_engine

    def engine(*args, **kwargs):
        if reseeding_engine:
            random.seed(99)
            np.random.seed(99)
            torch.manual_seed(99)
        return make_engine(*args, **kwargs)

    monkeypatch.setattr(trainer_module, "make_engine", engine)
    trainer = trainer_module.Trainer(cfg, run_dir, 0, 1, torch.device("cpu"))
    draws = [random.random(), float(np.random.rand()), float(torch.rand(1))]
    trainer.tracker.close("FINISHED")
    trainer.engine.close()
    return draws


def test_an_engine_that_reseeds_leaves_the_loops_random_streams_alone(tmp_path, monkeypatch):
    with gloo_rank():
        plain = _draws_after_start(tmp_path, "plain", False, monkeypatch)
        reseeded = _draws_after_start(tmp_path, "reseeded", True, monkeypatch)
        random.seed(99)
        draw_after_reseed = random.random()
    assert reseeded == plain
    assert plain[0] != draw_after_reseed
