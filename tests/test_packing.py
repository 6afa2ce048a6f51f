"""packing.py and the padding-free forward passes: packed and padded micro-batches give the
same log-probs, entropies, values and gradients (sdpa with a block-diagonal mask on the CPU),
and a micro-batch with no response token still runs a forward and a backward."""

from __future__ import annotations

import pytest
import torch
from helpers import gloo_rank, qwen2_config
from transformers import Qwen2ForCausalLM, Qwen2ForTokenClassification

from hpc_ppo.batch import (
    MicroBatching,
    collate,
    computed_tokens,
    critic_forward,
    forward_all,
    micro_batches,
    plan_micro_batches,
    policy_forward,
)
from hpc_ppo.model import shard
from hpc_ppo.packing import pack
from hpc_ppo.rollout.base import Sample

VOCAB = 48


def _config(**kw):
    return qwen2_config(VOCAB, attn_implementation="sdpa", **kw)


def _batch(prompt_lens: list[int], resp_lens: list[int], seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    samples = []
    for i, (p, r) in enumerate(zip(prompt_lens, resp_lens, strict=True)):
        ids = torch.randint(3, VOCAB, (p + r,), generator=g).tolist()
        samples.append(Sample(i, ids[:p], ids[p:], [-0.5] * r, False))
    return collate(samples, [0.0] * len(samples), pad_id=0)


PROMPTS = [3, 9, 5, 1, 7, 4]
RESPONSES = [6, 2, 0, 11, 4, 9]  # one empty response, uneven lengths on both sides


def test_pack_lays_rows_back_to_back_without_padding():
    batch = _batch([2, 3, 1], [2, 0, 3])
    pk = pack(
        batch["input_ids"], batch["attention_mask"], batch.prompt_width, batch["response_mask"]
    )
    real = batch["input_ids"][batch["attention_mask"].bool()]
    # row 1 has no response token: it is left out
    assert pk.input_ids.tolist() == [real[:4].tolist() + real[7:].tolist()]
    assert pk.position_ids.tolist() == [[0, 1, 2, 3, 0, 1, 2, 3]]
    assert pk.targets.tolist() == [1, 2, 4, 5, 6]  # the positions before each response token
    assert pk.labels.tolist() == pk.input_ids[0, pk.targets + 1].tolist()
    assert pk.unpack(torch.arange(1.0, 6.0)).tolist() == [[1, 2, 0], [0, 0, 0], [3, 4, 5]]


@pytest.mark.parametrize("max_tokens", [None, 40])
def test_packed_and_padded_passes_agree_with_gradients(max_tokens):
    torch.manual_seed(0)
    policy = Qwen2ForCausalLM(_config())
    critic = Qwen2ForTokenClassification(_config(num_labels=1, classifier_dropout=0.0))
    batch = _batch(PROMPTS, RESPONSES)
    mask = batch["response_mask"].bool()
    got = {}
    for padding_free in (False, True):
        plan = plan_micro_batches(batch, MicroBatching(3, max_tokens, padding_free))
        assert plan.packed is padding_free
        with torch.no_grad():
            values = forward_all(critic_forward, critic, batch, plan)
        policy.zero_grad()
        lp = torch.zeros(mask.shape, dtype=torch.float32)
        ent = torch.zeros(mask.shape, dtype=torch.float32)
        for rows, micro in micro_batches(batch, plan):
            assert (micro.packed is not None) is padding_free
            logprobs, entropy = policy_forward(policy, micro, 0.7, with_entropy=True)
            ((logprobs + 0.1 * entropy) * micro["response_mask"]).sum().backward()
            width = logprobs.shape[1]
            lp[rows, :width], ent[rows, :width] = logprobs.detach(), entropy.detach()
        grads = {n: p.grad.clone() for n, p in policy.named_parameters()}
        got[padding_free] = (lp[mask], ent[mask], values[mask], grads)
    padded, packed = got[False], got[True]
    for a, b in zip(padded[:3], packed[:3], strict=True):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)
    for name, grad in padded[3].items():
        torch.testing.assert_close(packed[3][name], grad, rtol=1e-4, atol=1e-5, msg=name)


def test_token_budget_counts_real_tokens_when_padding_free():
    batch = _batch([2, 2, 20, 2], [30, 2, 2, 2])
    padded = plan_micro_batches(batch, MicroBatching(64, 40, padding_free=False))
    packed = plan_micro_batches(batch, MicroBatching(64, 40, padding_free=True))
    # padded: the 32- and 22-token rows cost 2 x 32 together; packed: 32 + 22 > 40 still,
    # but the two 4-token rows and the 22-token row fit one budget of real tokens
    assert len(packed) < len(padded)
    lengths = batch["attention_mask"].sum(-1)
    for rows in packed:
        assert len(rows) == 1 or int(lengths[rows].sum()) <= 40


def test_a_micro_batch_without_response_tokens_still_runs_backward_on_fsdp():
    """The ranks' collectives must match: an all-empty micro-batch runs forward and backward
    through every FSDP unit (zero gradients), not nothing."""
    with gloo_rank():
        torch.manual_seed(0)
        policy = shard(Qwen2ForCausalLM(_config()), torch.device("cpu"), False)
        batch = _batch([3, 5], [0, 0])
        (_, micro), *_ = micro_batches(
            batch, plan_micro_batches(batch, MicroBatching(4, None, True))
        )
        assert micro.packed is not None and micro.packed.no_response
        logprobs, _ = policy_forward(policy, micro, 1.0)
        assert logprobs.shape == (2, 1) and not logprobs.any()
        logprobs.sum().backward()
        grads = [p.grad for p in policy.parameters()]
        assert all(g is not None for g in grads)
        assert all(not g.full_tensor().any() for g in grads)


def test_computed_tokens_count_padding_only_when_padded():
    batch = _batch([2, 4, 3], [5, 1, 0])  # real tokens 7 + 5 + 3; the empty row is left out
    padded = plan_micro_batches(batch, MicroBatching(3, None, padding_free=False))
    packed = plan_micro_batches(batch, MicroBatching(3, None, padding_free=True))
    assert computed_tokens(batch, padded) == 3 * (4 + 5)
    assert computed_tokens(batch, packed) == 7 + 5
