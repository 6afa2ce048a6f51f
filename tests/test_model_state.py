"""model.full_state_iter: the FSDP2-sharded policy's full parameters under their HF names,
gathered unit by unit (one all-gather per decoder layer and one for the root), equal to the
unsharded model's; in bf16 from a fp32 model under mixed precision, as pushed to vLLM."""

from __future__ import annotations

import copy

import pytest
import torch
from helpers import TINY, gloo_rank

from hpc_ppo.config import load_config
from hpc_ppo.model import full_state_iter, load_policy, shard, tiny_tokenizer


@pytest.mark.parametrize("mixed_bf16", [False, True])
def test_unit_by_unit_gather_equals_the_unsharded_model(mixed_bf16):
    plain = load_policy(load_config(TINY).model, tiny_tokenizer(), seed=0)
    want = {n: p.detach().clone() for n, p in plain.named_parameters()}
    with gloo_rank():
        sharded = shard(copy.deepcopy(plain), torch.device("cpu"), mixed_bf16)
        got = {}
        for name, tensor in full_state_iter(sharded, torch.bfloat16):
            got[name] = tensor.clone()  # valid until the next one: copy, as engines do
        again = dict(full_state_iter(sharded))  # the model is left sharded, usable again
    assert list(got) != [] and sorted(got) == sorted(want)
    for name, tensor in got.items():
        assert tensor.dtype == torch.bfloat16 and not hasattr(tensor, "full_tensor"), name
        assert torch.equal(tensor, want[name].to(torch.bfloat16)), name
    assert all(hasattr(p, "full_tensor") for p in sharded.parameters())  # resharded
    assert sorted(again) == sorted(want)


@pytest.mark.parametrize("mixed_bf16", [False, True])
def test_gather_after_a_no_grad_forward_sees_the_updated_weights(mixed_bf16):
    """FSDP2 leaves the root unit (embeddings, final norm, head) unsharded after a forward
    without backward (old log-probs, validation scoring); an optimizer step then changes the
    sharded parameters only. The push must gather those, not the stale unsharded copy."""
    plain = load_policy(load_config(TINY).model, tiny_tokenizer(), seed=0)
    with gloo_rank():
        sharded = shard(copy.deepcopy(plain), torch.device("cpu"), mixed_bf16)
        shards = list(sharded.parameters())  # the DTensors the optimizer holds
        with torch.no_grad():
            sharded(input_ids=torch.tensor([[3, 4, 5]]))
            for param in shards:
                param.to_local().add_(0.25)  # what optimizer.step() does to the shards
        got = {name: tensor.clone() for name, tensor in full_state_iter(sharded)}
    dtype = torch.bfloat16 if mixed_bf16 else torch.float32
    for name, param in plain.named_parameters():
        assert torch.equal(got[name], (param.detach() + 0.25).to(dtype)), name
