"""sampler.py: the global prompt-index stream (epochs, resume) and each rank's slice."""

from __future__ import annotations

import json

import pytest
import torch

from hpc_ppo.errors import ConfigError
from hpc_ppo.sampler import PromptSampler, shard_for_rank


def draw(sampler: PromptSampler, n: int) -> list[list[int]]:
    return [sampler.next_indices() for _ in range(n)]


def test_sampler_epochs_are_permutations_and_reproducible():
    s = PromptSampler(num_prompts=12, batch_size=4, seed=7)
    batches = draw(s, 6)  # exactly two epochs
    assert all(len(b) == 4 for b in batches)
    epoch0 = sum(batches[:3], [])
    epoch1 = sum(batches[3:], [])
    assert sorted(epoch0) == sorted(epoch1) == list(range(12))
    assert epoch0 != epoch1  # reshuffled
    expected0 = torch.randperm(12, generator=torch.Generator().manual_seed(7)).tolist()
    expected1 = torch.randperm(12, generator=torch.Generator().manual_seed(8)).tolist()
    assert (epoch0, epoch1) == (expected0, expected1)
    assert draw(PromptSampler(12, 4, seed=7), 6) == batches
    assert draw(PromptSampler(12, 4, seed=8), 6) != batches


def test_sampler_independent_of_global_rng():
    torch.manual_seed(0)
    a = draw(PromptSampler(10, 3, seed=1), 4)
    torch.manual_seed(99)
    torch.rand(5)
    assert draw(PromptSampler(10, 3, seed=1), 4) == a


def test_sampler_batch_crossing_epoch_boundary():
    s = PromptSampler(num_prompts=10, batch_size=4, seed=0)
    batches = draw(s, 5)  # 20 indices = exactly two epochs; batch 2 crosses the boundary
    stream = sum(batches, [])
    assert sorted(stream[:10]) == sorted(stream[10:]) == list(range(10))
    assert s.state_dict()["epoch"] == 2 and s.state_dict()["position"] == 0
    perm0 = torch.randperm(10, generator=torch.Generator().manual_seed(0)).tolist()
    perm1 = torch.randperm(10, generator=torch.Generator().manual_seed(1)).tolist()
    assert batches[2] == perm0[8:] + perm1[:2]


def test_sampler_batch_larger_than_dataset():
    s = PromptSampler(num_prompts=3, batch_size=7, seed=5)
    stream = sum(draw(s, 3), [])
    assert all(sorted(stream[i : i + 3]) == [0, 1, 2] for i in range(0, 21, 3))
    assert s.state_dict()["epoch"] == 7


def test_sampler_no_shuffle_is_sequential():
    s = PromptSampler(5, 3, seed=0, shuffle=False)
    assert draw(s, 3) == [[0, 1, 2], [3, 4, 0], [1, 2, 3]]


@pytest.mark.parametrize("shuffle", [True, False])
def test_sampler_resume_continues_identically(shuffle):
    s = PromptSampler(num_prompts=13, batch_size=5, seed=11, shuffle=shuffle)
    draw(s, 5)
    state = json.loads(json.dumps(s.state_dict()))  # survives a checkpoint roundtrip
    assert set(state) >= {"epoch", "position", "seed", "num_prompts", "batch_size"}
    a = draw(s, 5)
    fresh = PromptSampler(num_prompts=13, batch_size=5, seed=999, shuffle=shuffle)
    fresh.load_state_dict(state)
    b = draw(fresh, 5)
    assert a == b
    assert draw(PromptSampler(13, 5, seed=11, shuffle=shuffle), 10)[5:] == a


def test_sampler_resume_rejects_changed_dataset():
    state = PromptSampler(10, 2, seed=0).state_dict()
    with pytest.raises(ConfigError) as err:
        PromptSampler(12, 2, seed=0).load_state_dict(state)
    msg = str(err.value)
    assert "data.path" in msg and "10 prompts" in msg and "has 12" in msg


def test_sampler_rejects_corrupt_state():
    state = {**PromptSampler(10, 2, seed=0).state_dict(), "position": 10}
    with pytest.raises(ValueError, match="corrupt sampler state"):
        PromptSampler(10, 2, seed=0).load_state_dict(state)


@pytest.mark.parametrize(
    ("num_prompts", "batch_size", "message"),
    [(0, 1, "num_prompts=0 must be >= 1"), (1, 0, "batch_size=0 must be >= 1")],
)
def test_sampler_bad_args(num_prompts, batch_size, message):
    with pytest.raises(ValueError, match=message):
        PromptSampler(num_prompts, batch_size, seed=0)


# ---------------------------------------------------------------- sharding


def test_shard_for_rank_contiguous_equal_slices():
    items = list(range(8))
    shards = [shard_for_rank(items, r, 4) for r in range(4)]
    assert shards == [[0, 1], [2, 3], [4, 5], [6, 7]]
    assert shard_for_rank(items, 0, 1) == items


def test_shard_for_rank_errors():
    with pytest.raises(ValueError, match="world_size=3"):
        shard_for_rank(list(range(8)), 0, 3)
    with pytest.raises(ValueError, match="rank=4"):
        shard_for_rank(list(range(8)), 4, 4)
