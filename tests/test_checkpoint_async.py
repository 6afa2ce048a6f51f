"""trainer.async_save: periodic checkpoints written in the background commit like sync ones."""

from __future__ import annotations

import json

import pytest
import torch
from test_run_local import run_cli

from hpc_ppo.checkpoint import complete_steps, load_model_only
from hpc_ppo.config import load_config
from hpc_ppo.model import build_tokenizer, load_policy


def _policy(run_dir, step):
    cfg = load_config(run_dir / "config.yaml")
    model = load_policy(cfg, build_tokenizer(cfg), cfg.trainer.seed)
    load_model_only(run_dir / "checkpoints" / f"step_{step}", "policy", model)
    return model.state_dict()


@pytest.mark.slow
def test_async_saves_commit_and_match_sync_saves(tmp_path):
    common = (
        "trainer.nprocs=2",
        "trainer.total_steps=6",
        "trainer.save_every=2",
        "trainer.keep_checkpoints=3",
    )
    sync = run_cli(tmp_path, *common, "trainer.run_name=sync")
    asyn = run_cli(tmp_path, *common, "trainer.run_name=async", "trainer.async_save=true")
    assert complete_steps(asyn) == complete_steps(sync) == [2, 4, 6]
    for step in (2, 4, 6):
        a, s = _policy(asyn, step), _policy(sync, step)
        assert all(torch.equal(a[k], s[k]) for k in s), step
    rows = [json.loads(x) for x in (asyn / "metrics.jsonl").read_text().splitlines()]
    assert sorted(r["step"] for r in rows if "time/save" in r) == [1, 3, 5]
