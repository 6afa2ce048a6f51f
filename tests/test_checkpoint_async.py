"""trainer.async_save: periodic checkpoints written in the background commit like sync ones."""

from __future__ import annotations

import json

import pytest
import torch
from test_run_local import run_cli

from hpc_ppo.checkpoint import complete_steps
from hpc_ppo.export import load_run_weights


def _policy(run_dir, step):
    return load_run_weights(run_dir, step)


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
