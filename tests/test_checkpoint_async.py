"""trainer.async_save: periodic checkpoints written in the background commit like sync ones."""

from __future__ import annotations

import pytest
import torch
from helpers import final_weights, metrics

from hpc_ppo.checkpoint import complete_steps


@pytest.mark.slow
def test_async_saves_commit_and_match_sync_saves(run_tiny):
    common = (
        "trainer.nprocs=2",
        "trainer.total_steps=6",
        "trainer.save_every=2",
        "trainer.keep_checkpoints=3",
    )
    sync = run_tiny(*common, "trainer.run_name=sync")
    asyn = run_tiny(*common, "trainer.run_name=async", "trainer.async_save=true")
    assert complete_steps(asyn) == complete_steps(sync) == [2, 4, 6]
    for step in (2, 4, 6):
        a, s = final_weights(asyn, step), final_weights(sync, step)
        assert a.keys() == s.keys(), step
        assert all(torch.equal(a[k], s[k]) for k in s), step
    rows = metrics(asyn)
    assert sorted(r["step"] for r in rows if "time/save" in r) == [1, 3, 5]
