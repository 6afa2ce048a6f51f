"""Micro-batches for forward/backward passes: a fixed row count or packing by a token budget.

Every rank must run the same number of forward/backward passes (FSDP2 all-gathers inside each),
so the ranks agree on the largest count any of them needs and each splits its rows into
exactly that many parts. With a token budget, rows are sorted by length and cut into
contiguous groups with the smallest possible largest padded size (rows x widest row), so
micro-batches carry little padding; each is trimmed to its own widths before the forward.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from hpc_ppo import dist as hdist
from hpc_ppo.batch import RolloutBatch

FULL_WIDTH_KEYS = ("input_ids", "attention_mask", "position_ids")


def row_lengths(batch: RolloutBatch) -> tuple[torch.Tensor, torch.Tensor]:
    """(prompt tokens, response tokens) per row, on the CPU."""
    attn = batch["attention_mask"].cpu()
    prompt = attn[:, : batch.prompt_width].sum(-1)
    return prompt, batch["response_mask"].cpu().sum(-1).long()


def plan(batch: RolloutBatch, max_rows: int, max_tokens: int | None) -> list[torch.Tensor]:
    """Row indices of each micro-batch; the same number of micro-batches on every rank."""
    n = len(batch)
    if max_tokens is None:
        k = int(hdist.all_reduce([math.ceil(n / max_rows)], "max")[0])
        k = min(k, n)
        edges = [round(i * n / k) for i in range(k + 1)]
        return [torch.arange(edges[i], edges[i + 1]) for i in range(k)]
    prompt, resp = row_lengths(batch)
    order = sorted(range(n), key=lambda i: (-int(prompt[i] + resp[i]), i))
    p, r = [int(prompt[i]) for i in order], [int(resp[i]) for i in order]
    k = len(_pack(p, r, max_tokens, max_rows))
    k = min(int(hdist.all_reduce([k], "max")[0]), n)
    groups = _split_exactly(p, r, k, max_rows)
    return [torch.tensor([order[j] for j in g]) for g in groups]


def _cost(p: list[int], r: list[int], lo: int, hi: int) -> int:
    return (hi - lo) * (max(p[lo:hi]) + max(r[lo:hi]))


def _pack(p: list[int], r: list[int], cap: int, max_rows: int) -> list[range]:
    """Greedy contiguous packing under a padded-size cap (a single longer row gets its own)."""
    groups, lo = [], 0
    while lo < len(p):
        hi = lo + 1
        while hi < len(p) and hi - lo < max_rows and _cost(p, r, lo, hi + 1) <= cap:
            hi += 1
        groups.append(range(lo, hi))
        lo = hi
    return groups


def _split_exactly(p: list[int], r: list[int], k: int, max_rows: int) -> list[range]:
    """k contiguous groups minimising the largest padded size (binary search on the cap)."""
    lo, hi = 1, _cost(p, r, 0, len(p))
    while lo < hi:
        mid = (lo + hi) // 2
        if len(_pack(p, r, mid, max_rows)) <= k:
            hi = mid
        else:
            lo = mid + 1
    groups = _pack(p, r, lo, max_rows)
    while len(groups) < k:  # fewer groups than agreed: halve the largest
        big = max(range(len(groups)), key=lambda i: len(groups[i]))
        g = groups[big]
        if len(g) < 2:
            break
        mid = g.start + len(g) // 2
        groups[big : big + 1] = [range(g.start, mid), range(mid, g.stop)]
    return groups


def trimmed(batch: RolloutBatch) -> RolloutBatch:
    """Drop the columns that are padding for every row of this (sub-)batch."""
    prompt, resp = row_lengths(batch)
    width, keep_r = int(prompt.max()), max(1, int(resp.max()))
    left = batch.prompt_width - width
    out = {}
    for key, t in batch.t.items():
        if key in FULL_WIDTH_KEYS:
            out[key] = t[:, left : batch.prompt_width + keep_r]
        elif t.dim() == 2:
            out[key] = t[:, :keep_r]
        else:
            out[key] = t
    return RolloutBatch(width, out)


@torch.no_grad()
def forward_all(
    fn: Callable[..., torch.Tensor | tuple],
    model: nn.Module,
    batch: RolloutBatch,
    parts: list[torch.Tensor],
    **kw,
) -> torch.Tensor:
    """Run `fn` (policy_forward / critic_forward) over micro-batches; [rows, response width]."""
    out = torch.zeros(
        batch["responses"].shape, dtype=torch.float32, device=batch["responses"].device
    )
    for idx in parts:
        idx = idx.to(out.device)
        res = fn(model, trimmed(batch.select(idx)), **kw)
        res = res[0] if isinstance(res, tuple) else res
        out[idx, : res.shape[1]] = res
    return out
