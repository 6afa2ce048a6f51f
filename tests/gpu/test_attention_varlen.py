"""attention.py on a GPU: torch's real varlen kernel (bf16) gives the logits and gradients
of the same packed micro-batch under sdpa's block-diagonal mask."""

from __future__ import annotations

import pytest
import torch
from helpers import qwen2_config
from transformers import AutoModelForCausalLM

from hpc_ppo import attention
from hpc_ppo.batch import MicroBatching, collate, micro_batches, plan_micro_batches
from hpc_ppo.rollout.base import Sample

pytestmark = pytest.mark.skipif(
    attention.varlen_kernel() is None, reason="needs torch.nn.attention.varlen (torch >= 2.10)"
)


def _model(name: str) -> torch.nn.Module:
    cfg = qwen2_config(1000, hidden=256)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cfg, attn_implementation=name, dtype=torch.bfloat16)
    return model.cuda()


def test_varlen_kernel_matches_sdpa_on_packed_rows_with_gradients():
    g = torch.Generator().manual_seed(0)
    samples = []
    for i, (p, r) in enumerate([(37, 120), (5, 300), (80, 1), (64, 64), (9, 250)]):
        ids = torch.randint(3, 1000, (p + r,), generator=g).tolist()
        samples.append(Sample(i, ids[:p], ids[p:], [0.0] * r, False))
    batch = collate(samples, [0.0] * len(samples), pad_id=0).to(torch.device("cuda"))
    plan = plan_micro_batches(batch, MicroBatching(8, None, padding_free=True))
    ((_, micro),) = micro_batches(batch, plan)
    inputs = micro.packed.model_inputs()
    out = {}
    for name in ("sdpa", attention.register()):
        model = _model(name)
        logits = model(**inputs).logits.float()
        logits.square().mean().backward()
        out[name] = logits.detach(), model.model.layers[0].self_attn.q_proj.weight.grad.float()
    (want, want_grad), (got, got_grad) = out["sdpa"], out[attention.NAME]
    torch.testing.assert_close(got, want, rtol=2e-2, atol=2e-2)  # bf16 kernels differ
    cos = torch.nn.functional.cosine_similarity(got_grad.flatten(), want_grad.flatten(), dim=0)
    assert cos > 0.99, cos
