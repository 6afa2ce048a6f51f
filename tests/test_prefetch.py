"""prefetch.py: which files a starting rank reads ahead, within the memory budget, and that it
asks the kernel for each (the read itself is the kernel's; bench/restore.py times it)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from helpers import TINY

from hpc_ppo import prefetch
from hpc_ppo.config import load_config
from hpc_ppo.rank_env import RankEnv


def checkpoint(run_dir: Path, step: int, world_size: int) -> Path:
    folder = run_dir / "checkpoints" / f"step_{step}"
    folder.mkdir(parents=True)
    (folder / "COMPLETE").write_text("")
    (folder / "trainer.json").write_text(json.dumps({"step": step, "world_size": world_size}))
    for name in (".metadata", "__0_0.distcp", "__1_0.distcp"):
        (folder / name).write_bytes(b"x" * 10)
    return folder


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "model"
    folder.mkdir()
    for name in ("model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"):
        (folder / name).write_bytes(b"w" * 10)
    (folder / "config.json").write_text("{}")
    return folder


def names(files: list[Path]) -> list[str]:
    return [f"{f.parent.name}/{f.name}" for f in files]


def test_a_first_start_reads_the_weights_ahead_once_per_node(tmp_path, model_dir):
    cfg = load_config(TINY, [f"model.path={model_dir}"], check_paths=False)
    got = prefetch.start_files(tmp_path / "run", cfg, rank=0, world_size=2, local_rank=0)
    assert names(got) == [
        "model/model-00001-of-00002.safetensors",
        "model/model-00002-of-00002.safetensors",
    ]
    assert prefetch.start_files(tmp_path / "run", cfg, 1, 2, local_rank=1) == []
    builtin = load_config(TINY)  # nothing on disk to read
    assert prefetch.start_files(tmp_path / "run", builtin, 0, 1, 0) == []


def test_a_resume_reads_its_own_shards_and_weights_only_for_a_reference(tmp_path, model_dir):
    run = tmp_path / "run"
    checkpoint(run, 3, world_size=2)
    step = checkpoint(run, 5, world_size=2)
    (step.with_name("step_7")).mkdir()  # incomplete: not the one restored
    cfg = load_config(TINY, [f"model.path={model_dir}"], check_paths=False)
    got = prefetch.start_files(run, cfg, rank=1, world_size=2, local_rank=0)
    assert names(got) == ["step_5/.metadata", "step_5/__1_0.distcp"]
    # another world size reshards: every shard
    got = prefetch.start_files(run, cfg, rank=0, world_size=4, local_rank=0)
    assert names(got) == ["step_5/.metadata", "step_5/__0_0.distcp", "step_5/__1_0.distcp"]
    with_ref = load_config(
        TINY, [f"model.path={model_dir}", "algo.kl_coef=0.01"], check_paths=False
    )
    got = prefetch.start_files(run, with_ref, rank=0, world_size=2, local_rank=0)
    assert names(got)[:2] == names(sorted(model_dir.glob("*.safetensors")))
    assert names(got)[2:] == ["step_5/.metadata", "step_5/__0_0.distcp"]


def test_the_budget_keeps_the_leading_files_that_fit_half_the_available_memory(tmp_path):
    files = []
    for i, size in enumerate((10, 20, 30)):
        files.append(tmp_path / f"f{i}")
        files[-1].write_bytes(b"x" * size)
    assert prefetch.within_budget(files, available=100) == files[:2]  # 50: 10 + 20, not 30
    assert prefetch.within_budget(files, available=10) == []
    assert prefetch.within_budget(files, available=None) == files
    assert prefetch.available_memory() is None or prefetch.available_memory() > 0


def test_every_byte_of_every_file_is_read_and_a_vanished_file_is_skipped(tmp_path, monkeypatch):
    read: dict[str, int] = {}
    real = os.preadv

    def preadv(fd: int, buffers: list, offset: int) -> int:
        n = real(fd, buffers, offset)
        path = os.readlink(f"/proc/self/fd/{fd}")
        assert offset == read.get(path, 0)  # in order, nothing skipped
        read[path] = offset + n
        return n

    monkeypatch.setattr(os, "preadv", preadv)
    sizes = {"a": 10, "b": 0, "c": 25}
    for name, size in sizes.items():
        (tmp_path / name).write_bytes(b"x" * size)
    files = [tmp_path / "gone", *(tmp_path / name for name in sizes)]
    prefetch.read_ahead(files, chunk=8)
    assert read == {str(tmp_path / name): size for name, size in sizes.items()}


def test_a_damaged_checkpoint_starts_nothing_and_raises_nothing(tmp_path):
    run = tmp_path / "run"
    (checkpoint(run, 2, world_size=1) / "trainer.json").write_text("{not json")
    env = RankEnv(0, 0, 1, 1, "127.0.0.1", 29500, 0, "single")
    assert prefetch.prefetch_for_start(run, load_config(TINY), env) is None
    (run / "checkpoints" / "step_2" / "trainer.json").write_text(json.dumps({"world_size": 1}))
    thread = prefetch.prefetch_for_start(run, load_config(TINY), env)
    assert thread is not None
    thread.join(10)
    assert not thread.is_alive()


def test_the_ranks_of_a_node_share_the_budget(tmp_path, monkeypatch):
    run = tmp_path / "run"
    checkpoint(run, 4, world_size=4)  # 10-byte files: .metadata, then this rank's shard
    monkeypatch.setattr(prefetch, "available_memory", lambda: 80)
    read = []
    monkeypatch.setattr(prefetch, "read_ahead", lambda files: read.append(names(files)))
    for local_world_size in (2, 4):  # budget: 80 / 2 * 0.5 = 20 bytes, then 10
        env = RankEnv(0, 0, 4, local_world_size, "127.0.0.1", 29500, 0, "single")
        prefetch.prefetch_for_start(run, load_config(TINY), env).join(10)
    assert read == [["step_4/.metadata", "step_4/__0_0.distcp"], ["step_4/.metadata"]]
