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
