"""batch.py: collate, balancing across ranks, micro-batch planning and trimming (what FSDP
needs: the same count everywhere; no padding waste)."""

from __future__ import annotations

import torch
from helpers import qwen2_config

from hpc_ppo.batch import (
    MicroBatching,
    assign_groups,
    collate,
    plan_micro_batches,
    policy_forward,
    row_lengths,
    split_exactly,
    trimmed,
)
from hpc_ppo.rollout.base import Sample


def _batch(prompt_lens, resp_lens):
    samples = [
        Sample(i, list(range(3, 3 + p)), list(range(5, 5 + r)), [-0.5] * r, False)
        for i, (p, r) in enumerate(zip(prompt_lens, resp_lens, strict=True))
    ]
    return collate(samples, [0.0] * len(samples), pad_id=0)


def test_fixed_rows_split_into_near_equal_contiguous_parts():
    plan = plan_micro_batches(_batch([2] * 10, [3] * 10), MicroBatching(max_rows=4))
    assert [p.tolist() for p in plan] == [[0, 1, 2], [3, 4, 5, 6], [7, 8, 9]]


def test_token_budget_groups_similar_lengths_and_respects_budget():
    batch = _batch([2, 2, 2, 2, 2, 2], [10, 1, 10, 1, 1, 10])
    plan = plan_micro_batches(batch, MicroBatching(max_rows=64, max_tokens=40))
    prompt, resp = row_lengths(batch)
    covered = sorted(i for p in plan for i in p.tolist())
    assert covered == list(range(6))
    for p in plan:  # padded size of each micro-batch within the budget
        assert len(p) * int(prompt[p].max() + resp[p].max()) <= 40
    long_rows = {0, 2, 5}
    assert any(set(p.tolist()) == long_rows for p in plan)  # the three long rows travel together


def test_split_exactly_reaches_the_agreed_count():
    p, r = [2] * 5, [3] * 5
    groups = split_exactly(p, r, 4, max_rows=64)
    assert len(groups) == 4 and sum(len(g) for g in groups) == 5


def test_trimmed_drops_shared_padding_and_keeps_logprobs():
    from transformers import Qwen2ForCausalLM

    torch.manual_seed(0)
    model = Qwen2ForCausalLM(qwen2_config(32, hidden=16, layers=1)).eval()
    batch = _batch([2, 6, 3], [4, 2, 7])
    sub = batch.select(torch.tensor([0, 2]))
    small = trimmed(sub)
    assert small.prompt_width == 3 and small["responses"].shape[1] == 7
    assert small["input_ids"].shape[1] == 10 < sub["input_ids"].shape[1]
    with torch.no_grad():
        full, _ = policy_forward(model, sub, temperature=1.0)
        trim, _ = policy_forward(model, small, temperature=1.0)
    mask = small["response_mask"].bool()
    torch.testing.assert_close(trim[mask], full[:, :7][mask], rtol=1e-5, atol=1e-5)


def test_balance_gives_equal_group_counts_and_even_load():
    costs = [100, 90, 10, 10, 50, 40, 30, 30]
    owned = assign_groups(costs, world=2)
    assert sorted(g for o in owned for g in o) == list(range(8))
    assert [len(o) for o in owned] == [4, 4]
    loads = [sum(costs[g] for g in o) for o in owned]
    assert abs(loads[0] - loads[1]) <= 20  # contiguous split would give 250 vs 110


def test_balance_breaks_ties_deterministically():
    assert assign_groups([5, 5, 5, 5], world=2) == [[0, 2], [1, 3]]
