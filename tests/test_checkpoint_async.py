"""trainer.async_save: periodic checkpoints written in the background commit like sync ones."""

from __future__ import annotations

import pytest
import torch
import torch.distributed.checkpoint.staging as staging
from helpers import final_weights, metrics
from test_checkpoint import _parts, _train_a_little

from hpc_ppo import checkpoint as ckpt
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


def _values(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {
        k: (v.full_tensor() if hasattr(v, "full_tensor") else v).clone()
        for k, v in model.state_dict().items()
    }


@pytest.mark.parametrize("sharded", [False, True], ids=["plain", "fsdp2"])
def test_a_writer_kept_across_saves_stages_each_saves_own_state(
    one_rank, tmp_path, monkeypatch, sharded
):
    """trainer.async_save_pinned's path (one writer whose staged copy is refilled at every
    save), on CPU: pinning needs a GPU, so the staged copy is plain memory here. Each
    checkpoint holds the state at its own save, not the first save's and not a later one."""
    create = staging._create_cpu_state_dict
    monkeypatch.setattr(
        staging, "_create_cpu_state_dict", lambda sd, pin_memory=False, **kw: create(sd, **kw)
    )
    monkeypatch.setattr(ckpt, "_on_gpu", lambda states: True)
    parts = _parts(64, sharded)
    saver = ckpt.Checkpointer(tmp_path, parts, keep=3, async_save=True, pinned=True)
    assert isinstance(saver.writer, ckpt.dcp.FileSystemWriter)
    snapshots = {}
    for step in (1, 2):
        _train_a_little(parts)
        saver.save(step, {"sampler": {"position": step}}, final=False)
        snapshots[step] = [_values(p.model) for p in parts]
        _train_a_little(parts)  # training goes on while the save is written
    saver.finish_pending()
    assert complete_steps(tmp_path) == [1, 2]
    for step, saved in snapshots.items():
        other = _parts(64, sharded)
        state = ckpt.load(ckpt.checkpoint_root(tmp_path) / f"step_{step}", other)
        assert state["sampler"] == {"position": step}
        for p, want in zip(other, saved, strict=True):
            got = _values(p.model)
            assert all(torch.equal(got[k], v) for k, v in want.items()), step
            assert p.optimizer.state_dict()["state"][0]["step"] == 2 * step - 1, step
            assert p.scheduler.last_epoch == 2 * step - 1, step


def test_cpu_runs_keep_dcps_default_staging(one_rank, tmp_path):
    parts = _parts(64)
    assert ckpt.Checkpointer(tmp_path, parts, 2, async_save=True, pinned=True).writer is None
    assert ckpt.Checkpointer(tmp_path, parts, 2, async_save=False, pinned=True).writer is None
