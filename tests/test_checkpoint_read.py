"""The threaded DCP reader: its plan split, and loads equal to DCP's own reader.

Run: python -m pytest tests/test_checkpoint_read.py -q
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest
import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner

from hpc_ppo import checkpoint_read
from hpc_ppo.checkpoint_read import ThreadedReader, split_items


def place(item: tuple[str, int, int]) -> tuple[int, str, int]:
    name, offset, size = item
    return size, name, offset


def test_split_keeps_every_item_once_in_file_order_and_balances_bytes():
    items = [("b", 300, 100), ("a", 0, 400), ("b", 0, 300), ("a", 400, 100), ("b", 400, 100)]
    shares = split_items(items, place, 3)
    assert len(shares) == 3
    flat = [it for s in shares for it in s]
    assert flat == sorted(items, key=lambda it: (it[0], it[1]))  # file, then offset
    sizes = [sum(it[2] for it in s) for s in shares]
    assert sizes == [400, 400, 200]


@pytest.mark.parametrize("parts", [1, 4, 50])
def test_split_never_makes_empty_or_extra_shares(parts):
    items = [("f", i * 10, 10) for i in range(7)]
    shares = split_items(items, place, parts)
    assert 1 <= len(shares) <= min(parts, len(items))
    assert all(shares)
    assert sum(len(s) for s in shares) == len(items)
    assert split_items([], place, parts) == []


def state(seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    tensors = {f"layer{i}.w": torch.randn(64, 32 + i, generator=g) for i in range(9)}
    return {"model": tensors, "step": seed, "meta": {"note": f"saved with seed {seed}"}}


def empty_like(sd: dict) -> dict:
    return {
        "model": {k: torch.zeros_like(v) for k, v in sd["model"].items()},
        "step": -1,
        "meta": {"note": ""},
    }


@pytest.mark.parametrize("threads", [1, 3, 16])
def test_load_equals_dcp_own_reader(tmp_path: Path, threads: int):
    """Tensors and non-tensor values (DCP's byte items) come back exactly, at any split."""
    saved = state(7)
    dcp.save(saved, checkpoint_id=str(tmp_path), no_dist=True)
    own, threaded = empty_like(saved), empty_like(saved)
    dcp.load(own, checkpoint_id=str(tmp_path), no_dist=True)
    dcp.load(threaded, storage_reader=ThreadedReader(tmp_path, threads), no_dist=True)
    for k, v in saved["model"].items():
        assert torch.equal(threaded["model"][k], v), k
        assert torch.equal(threaded["model"][k], own["model"][k]), k
    assert threaded["step"] == own["step"] == 7
    assert threaded["meta"] == own["meta"] == saved["meta"]


def test_a_failed_read_is_raised_not_skipped(tmp_path: Path):
    """A damaged shard fails the load; no thread's error is lost."""
    saved = state(1)
    dcp.save(saved, checkpoint_id=str(tmp_path), no_dist=True)
    for shard in tmp_path.glob("*.distcp"):
        shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    with pytest.raises(CheckpointException) as err:  # DCP wraps each rank's error in it
        dcp.load(empty_like(saved), storage_reader=ThreadedReader(tmp_path, 4), no_dist=True)
    assert "corrupted" in str(err.value)  # torch.load's own words on the cut-short shard


class RecordingPlanner(DefaultLoadPlanner):
    """Which threads wrote values and resolved tensors."""

    def __init__(self) -> None:
        super().__init__()
        self.value_threads: set[str] = set()
        self.tensor_threads: set[str] = set()

    def load_bytes(self, read_item, value) -> None:
        self.value_threads.add(threading.current_thread().name)
        super().load_bytes(read_item, value)

    def resolve_tensor(self, read_item):
        self.tensor_threads.add(threading.current_thread().name)
        time.sleep(0.02)  # a real read's time: a share is not done before the next is handed out
        return super().resolve_tensor(read_item)


def test_tensors_are_read_in_threads_and_values_in_the_callers(tmp_path: Path):
    """The planner's nested dicts and lists are written by one thread only."""
    saved = state(3)
    dcp.save(saved, checkpoint_id=str(tmp_path), no_dist=True)
    planner = RecordingPlanner()
    loaded = empty_like(saved)
    dcp.load(loaded, storage_reader=ThreadedReader(tmp_path, 4), planner=planner, no_dist=True)
    assert planner.value_threads == {threading.current_thread().name}
    assert len(planner.tensor_threads) == 4
    assert all(name.startswith("dcp-read") for name in planner.tensor_threads)
    assert loaded["meta"] == saved["meta"] and loaded["step"] == 3


def test_threads_default_to_the_cpus_this_rank_may_use(tmp_path: Path, monkeypatch):
    monkeypatch.setattr(checkpoint_read, "usable_cpus", lambda: 3)
    assert ThreadedReader(tmp_path).threads == 3
    monkeypatch.setattr(checkpoint_read, "usable_cpus", lambda: 64)
    assert ThreadedReader(tmp_path).threads == checkpoint_read.MAX_THREADS
    assert ThreadedReader(tmp_path, 2).threads == 2


def test_usable_cpus_where_the_os_has_no_affinity(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2}, raising=False)
    assert checkpoint_read.usable_cpus() == 3  # a Slurm task's share
    monkeypatch.delattr(os, "sched_getaffinity")  # as on macOS
    monkeypatch.setattr(os, "cpu_count", lambda: 5)
    assert checkpoint_read.usable_cpus() == 5
