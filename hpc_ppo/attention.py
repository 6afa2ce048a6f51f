"""Packed-sequence attention without flash-attn: torch's own varlen kernel, or row by row.

    hpc-ppo run configs/tiny-cpu.yaml          # model.attn_implementation=auto: this module

transformers runs packed sequences (packing.py) with flash-attn's varlen kernel when
flash-attn is installed; under sdpa it builds a [T, T] block-diagonal mask instead, and the
masked kernel computes attention over all T x T pairs: 8x the work of the real ones for 8
packed rows (on the CPU default, 2.2x slower steps than padded micro-batches). This module's
implementation, registered with transformers as "hpc_ppo_varlen" (`attn_implementation=auto`
everywhere but a GPU with flash-attn), sends packed micro-batches (their cumulative lengths
passed as `cu_seq_lens_q` / `cu_seq_lens_k`, as for flash-attn) to torch's varlen kernel on a
GPU (torch.nn.attention.varlen, torch >= 2.10, Flash Attention inside) and to sdpa row by row
elsewhere; everything else (a padding mask, generation with a KV cache, one unpadded
sequence) goes to sdpa, unchanged.
"""

from __future__ import annotations

import functools
import inspect
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

NAME = "hpc_ppo_varlen"
KERNEL_DEVICES = ("cuda",)  # where torch's varlen kernel runs (Flash Attention)


def varlen_kernel() -> Any | None:
    """torch.nn.attention.varlen.varlen_attn, or None where this torch lacks it."""
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:
        return None
    return varlen_attn


def register() -> str:
    """Make NAME a valid `attn_implementation` (idempotent); returns NAME."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS

    AttentionInterface.register(NAME, attention)
    ALL_MASK_ATTENTION_FUNCTIONS.register(NAME, _mask)
    return NAME


def _mask(**kwargs: Any) -> Tensor | None:
    """sdpa's mask where there is padding; none otherwise: a packed micro-batch's rows are told
    apart by their cumulative lengths, not by a [T, T] mask (whose building this skips)."""
    from transformers.masking_utils import sdpa_mask

    if kwargs.get("attention_mask") is None:
        return None
    return sdpa_mask(**kwargs)


def attention(
    module: torch.nn.Module,
    query: Tensor,
    key: Tensor,
    value: Tensor,
    attention_mask: Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs: Any,
) -> tuple[Tensor, None]:
    """transformers' attention-function contract: [B, H, S, D] in, ([B, S, H, D], None) out."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    cu = kwargs.get("cu_seq_lens_q")
    if cu is None and attention_mask is None and query.shape[0] == 1 and query.shape[2] > 1:
        cu = cu_seq_lens(kwargs.get("position_ids"))  # packed without the lengths: find them
    windowed = kwargs.get("sliding_window") is not None  # a sliding-window layer: sdpa's mask
    if cu is None or attention_mask is not None or dropout > 0.0 or windowed:
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
    max_len = kwargs.get("max_length_q") or int((cu[1:] - cu[:-1]).max())
    return varlen(query, key, value, cu, max_len, scaling), None


def cu_seq_lens(position_ids: Tensor | None) -> Tensor | None:
    """Cumulative lengths of the rows packed in `position_ids` [1, T] (each row restarts at
    0); None for one row or none."""
    if position_ids is None or position_ids.dim() != 2 or position_ids.shape[0] != 1:
        return None
    starts = torch.nonzero(position_ids[0] == 0).flatten()
    if starts.numel() < 2 or int(starts[0]) != 0:
        return None
    end = torch.tensor([position_ids.shape[1]], device=starts.device)
    return torch.cat([starts, end]).to(torch.int32)


def varlen(
    query: Tensor, key: Tensor, value: Tensor, cu: Tensor, max_len: int, scale: float | None
) -> Tensor:
    """Causal attention of each packed row with itself: [1, H, T, D] in, [1, T, H, D] out.
    torch's varlen kernel on a GPU; elsewhere (the CPU, or a torch without it) sdpa row by
    row, which computes the same pairs without a [T, T] mask."""
    kernel = varlen_kernel()
    if kernel is None or query.device.type not in KERNEL_DEVICES:
        return _row_by_row(query, key, value, cu, scale)
    q, k, v = (x[0].transpose(0, 1) for x in (query, key, value))  # [T, H, D]
    params = _parameters(kernel)
    options: dict[str, Any] = {}
    if "scale" in params:
        options["scale"] = scale
    elif scale is not None:  # torch 2.10: always 1/sqrt(D); scale the queries instead
        q = q * (scale * q.shape[-1] ** 0.5)
    if q.shape[1] != k.shape[1]:  # grouped-query attention
        if "enable_gqa" in params:
            options["enable_gqa"] = True
        else:
            groups = q.shape[1] // k.shape[1]
            k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
    if "window_size" in params:  # later torch spells causal as a (left, right) window
        options["window_size"] = (-1, 0)
    else:
        options["is_causal"] = True
    cu = cu.to(device=q.device, dtype=torch.int32)
    out = kernel(
        q.contiguous(), k.contiguous(), v.contiguous(), cu, cu, max_len, max_len, **options
    )
    return out.unsqueeze(0)


@functools.lru_cache(maxsize=4)
def _parameters(kernel: Any) -> frozenset[str]:
    """The kernel's keyword names (its signature changed across torch releases); read once,
    not in every layer's forward."""
    return frozenset(inspect.signature(kernel).parameters)


def _row_by_row(query: Tensor, key: Tensor, value: Tensor, cu: Tensor, scale: float | None):
    bounds = cu.tolist()
    gqa = query.shape[1] != key.shape[1]
    rows = [
        F.scaled_dot_product_attention(
            query[:, :, a:b],
            key[:, :, a:b],
            value[:, :, a:b],
            is_causal=True,
            scale=scale,
            enable_gqa=gqa,
        )
        for a, b in zip(bounds[:-1], bounds[1:], strict=True)
    ]
    return torch.cat(rows, dim=2).transpose(1, 2)
