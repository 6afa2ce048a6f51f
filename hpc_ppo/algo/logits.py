"""Log-probs and entropies of sampled tokens from logits over a large vocabulary.

    python -m pytest tests/algo/test_logits.py -q       # against torch.distributions, gradcheck

Computed in float32 (float64 stays float64) over chunks of rows, with a hand-written
backward. Autograd through the plain formulas would keep several float32 copies of the
[tokens, vocab] logits for the backward pass (the upcast, the temperature scaling, the
log-softmax and its exp): with Qwen2's 152k vocabulary that is 2.4 GB per 4k tokens each, the
memory that bounded the 7B update's micro-batches. Here the backward keeps only the logits as
they came (bf16 on GPU) and two floats per row, and recomputes each chunk's softmax.
"""

from __future__ import annotations

import torch
from torch import Tensor

# Rows per chunk: this many logits (x 4 bytes in float32) in flight at once, ~256 MB.
CHUNK_ELEMENTS = 1 << 26


def logprobs_and_entropy(
    logits: Tensor, labels: Tensor, temperature: float = 1.0, chunk_rows: int | None = None
) -> tuple[Tensor, Tensor]:
    """(log softmax(logits / temperature)[labels], entropy of softmax(logits / temperature)),
    both shaped like `labels`; `logits` is [..., V] in any float dtype. Differentiable in both
    outputs; an output left out of the loss costs its backward nothing."""
    if labels.shape != logits.shape[:-1]:
        raise ValueError(
            f"labels shape {tuple(labels.shape)} does not match logits shape "
            f"{tuple(logits.shape)} without the vocab dim"
        )
    vocab = logits.shape[-1]
    rows = chunk_rows or max(1, CHUNK_ELEMENTS // max(vocab, 1))
    lp, ent = _LogprobEntropy.apply(
        logits.reshape(-1, vocab), labels.reshape(-1).long(), float(temperature), rows
    )
    return lp.view(labels.shape), ent.view(labels.shape)


def _compute_dtype(t: Tensor) -> torch.dtype:
    return torch.float64 if t.dtype == torch.float64 else torch.float32


class _LogprobEntropy(torch.autograd.Function):
    """Chunked forward; the backward recomputes each chunk's log-softmax from the saved logits
    and per-row max and logsumexp:

        d logp[y] / dz = onehot(y) - p          d H / dz = -p * (log p + H)

    with z = logits / temperature, then divided by the temperature once more for d/dlogits.
    """

    @staticmethod
    def forward(ctx, logits: Tensor, labels: Tensor, temperature: float, rows: int):  # type: ignore[override]
        dtype = _compute_dtype(logits)
        n = logits.shape[0]
        lp = torch.empty(n, dtype=dtype, device=logits.device)
        ent = torch.empty(n, dtype=dtype, device=logits.device)
        # Per row: the max, then the logsumexp of the shifted logits. Subtracting the max first
        # keeps log p exact for huge logits (float32 spacing near 1e4 is 1e-3).
        top = torch.empty(n, dtype=dtype, device=logits.device)
        lse = torch.empty(n, dtype=dtype, device=logits.device)
        for s in range(0, n, rows):
            z = logits[s : s + rows].to(dtype) / temperature
            top[s : s + rows] = z.amax(dim=-1)
            z -= top[s : s + rows, None]
            lse[s : s + rows] = torch.logsumexp(z, dim=-1)
            logp = z - lse[s : s + rows, None]
            lp[s : s + rows] = logp.gather(-1, labels[s : s + rows, None]).squeeze(-1)
            ent[s : s + rows] = -(logp.exp() * logp).sum(-1)
        ctx.save_for_backward(logits, labels, top, lse, ent)
        ctx.temperature, ctx.rows = temperature, rows
        ctx.set_materialize_grads(False)  # an unused output's gradient arrives as None
        return lp, ent

    @staticmethod
    def backward(ctx, g_lp: Tensor | None, g_ent: Tensor | None):  # type: ignore[override]
        logits, labels, top, lse, ent = ctx.saved_tensors
        if g_lp is None and g_ent is None:
            return None, None, None, None
        dtype, t, rows = lse.dtype, ctx.temperature, ctx.rows
        grad = torch.empty_like(logits)
        for s in range(0, logits.shape[0], rows):
            z = logits[s : s + rows].to(dtype) / t
            logp = z - top[s : s + rows, None] - lse[s : s + rows, None]
            p = logp.exp()
            gz = torch.zeros_like(logp)
            if g_lp is not None:
                g = g_lp[s : s + rows, None].to(dtype)
                gz -= p * g
                gz.scatter_add_(-1, labels[s : s + rows, None], g)
            if g_ent is not None:
                gz -= g_ent[s : s + rows, None].to(dtype) * p * (logp + ent[s : s + rows, None])
            grad[s : s + rows] = gz / t
        return grad, None, None, None
