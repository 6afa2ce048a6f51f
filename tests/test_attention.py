"""attention.py: the "hpc_ppo_varlen" implementation routes packed micro-batches to torch's
varlen kernel and everything else to sdpa. The kernel is CUDA-only, so here it is replaced by
a reference (each row's causal sdpa) in both signatures torch has shipped; tests/gpu runs the
real one."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from helpers import qwen2_config
from transformers import AutoModelForCausalLM

from hpc_ppo import attention
from hpc_ppo.batch import MicroBatching, collate, micro_batches, plan_micro_batches
from hpc_ppo.rollout.base import Sample


def _rows(q, k, v, cu):
    for a, b in zip(cu[:-1].tolist(), cu[1:].tolist(), strict=True):
        yield a, b, (x[a:b].transpose(0, 1) for x in (q, k, v))  # [H, len, D]


def kernel_new(
    q, k, v, cu_q, cu_k, max_q, max_k, *, scale=None, window_size=(-1, -1), enable_gqa=False
):
    assert window_size == (-1, 0) and torch.equal(cu_q, cu_k) and cu_q.dtype == torch.int32
    assert max_q == max_k == int((cu_q[1:] - cu_q[:-1]).max())
    out = torch.empty_like(q)
    for a, b, (qi, ki, vi) in _rows(q, k, v, cu_q):
        o = F.scaled_dot_product_attention(
            qi, ki, vi, is_causal=True, scale=scale, enable_gqa=enable_gqa
        )
        out[a:b] = o.transpose(0, 1)
    return out


def kernel_2_10(q, k, v, cu_q, cu_k, max_q, max_k, is_causal=False, return_aux=None):
    assert is_causal and q.shape[1] == k.shape[1]  # no GQA in this signature: kv repeated
    out = torch.empty_like(q)
    for a, b, (qi, ki, vi) in _rows(q, k, v, cu_q):
        out[a:b] = F.scaled_dot_product_attention(qi, ki, vi, is_causal=True).transpose(0, 1)
    return out


def _model(name: str):
    cfg = qwen2_config(40)
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(cfg, attn_implementation=name).eval()


def _batch():
    g = torch.Generator().manual_seed(1)
    lens = [(3, 5), (6, 2), (2, 7)]
    samples = []
    for i, (p, r) in enumerate(lens):
        ids = torch.randint(3, 40, (p + r,), generator=g).tolist()
        samples.append(Sample(i, ids[:p], ids[p:], [0.0] * r, False))
    return collate(samples, [0.0] * 3, pad_id=0)


@pytest.mark.parametrize("kernel", [kernel_new, kernel_2_10])
def test_packed_rows_go_to_the_varlen_kernel_and_match_sdpa(kernel, monkeypatch):
    calls = []

    def counted(*args, **kwargs):
        calls.append(1)
        return kernel(*args, **kwargs)

    counted.__signature__ = __import__("inspect").signature(kernel)
    monkeypatch.setattr(attention, "varlen_kernel", lambda: counted)
    monkeypatch.setattr(attention, "KERNEL_DEVICES", ("cuda", "cpu"))  # the reference runs here
    name = attention.register()
    batch = _batch()
    ((_, micro),) = micro_batches(batch, plan_micro_batches(batch, MicroBatching(8, None, True)))
    inputs = micro.packed.model_inputs()
    with torch.no_grad():
        want = _model("sdpa")(**inputs).logits  # sdpa: the block-diagonal mask
        got = _model(name)(**inputs).logits
        assert len(calls) == 2  # one per layer
        # without the bounds, they are found from the positions
        inputs = {k: v for k, v in inputs.items() if not k.startswith(("cu_", "max_"))}
        again = _model(name)(**inputs).logits
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(again, want, rtol=1e-5, atol=1e-5)
    assert len(calls) == 4


def test_padding_and_single_sequences_stay_with_sdpa(monkeypatch):
    def never(*args, **kwargs):
        raise AssertionError("the varlen kernel ran")

    monkeypatch.setattr(attention, "varlen_kernel", lambda: never)
    name = attention.register()
    batch = _batch()
    padded = {
        "input_ids": batch["input_ids"],
        "attention_mask": batch["attention_mask"],
        "position_ids": batch["position_ids"],
    }
    one = {"input_ids": batch["input_ids"][:1, -6:]}
    with torch.no_grad():
        for inputs in (padded, one):
            torch.testing.assert_close(
                _model(name)(**inputs).logits, _model("sdpa")(**inputs).logits
            )


def test_without_the_kernel_or_on_the_cpu_rows_go_through_sdpa_one_by_one(monkeypatch):
    """The CPU path (and a torch without the kernel): same logits as sdpa's [T, T] mask."""
    name = attention.register()
    batch = _batch()
    ((_, micro),) = micro_batches(batch, plan_micro_batches(batch, MicroBatching(8, None, True)))
    inputs = micro.packed.model_inputs()
    with torch.no_grad():
        want = _model("sdpa")(**inputs).logits
        for kernel in (None, kernel_new):  # a CPU tensor never reaches the kernel
            monkeypatch.setattr(attention, "varlen_kernel", lambda k=kernel: k)
            torch.testing.assert_close(_model(name)(**inputs).logits, want, rtol=1e-5, atol=1e-5)


def test_cu_seq_lens_from_positions():
    pos = torch.tensor([[0, 1, 2, 0, 1, 0, 1, 2, 3]])
    assert attention.cu_seq_lens(pos).tolist() == [0, 3, 5, 9]
    assert attention.cu_seq_lens(torch.tensor([[0, 1, 2, 3]])) is None  # one row
    assert attention.cu_seq_lens(None) is None


def test_auto_picks_flash_attn_on_a_gpu_that_has_it_and_varlen_elsewhere(monkeypatch):
    from hpc_ppo.config import ModelConfig
    from hpc_ppo.model import attn_implementation

    assert attn_implementation(ModelConfig()) == attention.NAME  # this CPU machine
    assert attn_implementation(ModelConfig(attn_implementation="sdpa")) == "sdpa"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr("importlib.util.find_spec", lambda name, *a: object())  # flash-attn
    assert attn_implementation(ModelConfig()) == "flash_attention_2"
    assert attn_implementation(ModelConfig(attn_implementation="varlen")) == attention.NAME


@pytest.mark.parametrize(
    ("choice", "attn", "device", "packed"),
    [
        (None, "auto", "cuda", True),
        (None, "varlen", "cuda", True),
        (None, "flash_attention_2", "cuda", True),
        (None, "sdpa", "cuda", False),  # a [T, T] mask over the packed micro-batch: padded
        (None, "eager", "cuda", False),
        (None, "auto", "cpu", False),  # row-by-row attention measured slower on the CPU
        (True, "auto", "cpu", True),  # an explicit choice stands
        (False, "auto", "cuda", False),
    ],
)
def test_padding_free_default_follows_device_and_attention(choice, attn, device, packed):
    from hpc_ppo.config import ModelConfig
    from hpc_ppo.model import padding_free

    got = padding_free(choice, ModelConfig(attn_implementation=attn), torch.device(device))
    assert got is packed


def test_padding_free_under_sdpa_is_kept_with_a_warning(caplog):
    from hpc_ppo.config import ModelConfig
    from hpc_ppo.model import padding_free

    with caplog.at_level("WARNING", logger="hpc_ppo.model"):
        assert padding_free(True, ModelConfig(attn_implementation="sdpa"), torch.device("cuda"))
    assert "model.attn_implementation=auto" in caplog.text and "[T, T]" in caplog.text


def test_a_sliding_window_layer_keeps_sdpa(monkeypatch):
    """A packed micro-batch in a sliding-window layer (Qwen2 with use_sliding_window) goes to
    sdpa, whose mask carries the window; the varlen path has none."""
    calls = []
    monkeypatch.setattr(attention, "varlen", lambda *a, **k: calls.append(1))
    sdpa = []
    monkeypatch.setattr(
        "transformers.integrations.sdpa_attention.sdpa_attention_forward",
        lambda *a, **k: sdpa.append(k.get("sliding_window")) or (None, None),
    )
    q = torch.zeros(1, 2, 5, 4)
    cu = torch.tensor([0, 2, 5], dtype=torch.int32)
    module = torch.nn.Module()
    attention.attention(module, q, q, q, None, cu_seq_lens_q=cu, sliding_window=3)
    attention.attention(module, q, q, q, None, cu_seq_lens_q=cu)
    assert sdpa == [3] and calls == [1]
