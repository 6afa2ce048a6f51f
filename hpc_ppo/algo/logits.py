"""Log-probs and entropies of sampled tokens from logits over a large vocabulary.

    python -m pytest tests/algo/test_logits.py -q       # against torch.distributions, gradcheck

Computed in float32 (float64 stays float64) over chunks of rows, with a hand-written
backward. Autograd through the plain formulas would keep several float32 copies of the
[tokens, vocab] logits for the backward pass (the upcast, the temperature scaling, the
log-softmax and its exp): with Qwen2's 152k vocabulary that is 2.4 GB per 4k tokens each, the
memory that bounded the 7B update's micro-batches. Here the backward keeps only the logits as
they came (bf16 on GPU) and the entropies, and recomputes each chunk's log-softmax. Each
chunk is a few passes over memory: one fused log-softmax, in-place arithmetic, no entropy
where the caller does not want it (old and reference log-probs), no division at temperature 1.
"""

from __future__ import annotations

import torch
from torch import Tensor

# Rows per chunk: this many logits (x 4 bytes in float32) in flight at once, ~256 MB.
CHUNK_ELEMENTS = 1 << 26


def logprobs_and_entropy(
    logits: Tensor,
    labels: Tensor,
    temperature: float = 1.0,
    chunk_rows: int | None = None,
    entropy: bool = True,
) -> tuple[Tensor, Tensor | None]:
    """(log softmax(logits / temperature)[labels], entropy of softmax(logits / temperature)),
    both shaped like `labels`; the entropy is None when `entropy=False` (not computed).
    `logits` is [..., V] in any float dtype. Differentiable in both outputs; an output left
    out of the loss costs its backward nothing."""
    if labels.shape != logits.shape[:-1]:
        raise ValueError(
            f"labels shape {tuple(labels.shape)} does not match logits shape "
            f"{tuple(logits.shape)} without the vocab dim"
        )
    vocab = logits.shape[-1]
    rows = chunk_rows or max(1, CHUNK_ELEMENTS // max(vocab, 1))
    lp, ent = _LogprobEntropy.apply(
        logits.reshape(-1, vocab), labels.reshape(-1).long(), float(temperature), rows, entropy
    )
    return lp.view(labels.shape), ent.view(labels.shape) if entropy else None


def _compute_dtype(t: Tensor) -> torch.dtype:
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def _log_softmax(logits: Tensor, temperature: float, dtype: torch.dtype) -> Tensor:
    """log softmax(logits / temperature) in `dtype`: one copy, then in place and fused (the
    fused kernel subtracts each row's max first, so huge logits keep their precision)."""
    z = logits.to(dtype, copy=True)
    if temperature != 1.0:
        z.div_(temperature)
    return torch.log_softmax(z, dim=-1)


class _LogprobEntropy(torch.autograd.Function):
    """Chunked forward; the backward recomputes each chunk's log-softmax from the saved logits:

        d logp[y] / dz = onehot(y) - p          d H / dz = -p * (log p + H)

    with z = logits / temperature, then divided by the temperature once more for d/dlogits.
    """

    @staticmethod
    def forward(ctx, logits: Tensor, labels: Tensor, temperature: float, rows: int, entropy: bool):  # type: ignore[override]
        dtype = _compute_dtype(logits)
        n = logits.shape[0]
        lp = torch.empty(n, dtype=dtype, device=logits.device)
        ent = torch.empty(n if entropy else 0, dtype=dtype, device=logits.device)
        for s in range(0, n, rows):
            logp = _log_softmax(logits[s : s + rows], temperature, dtype)
            lp[s : s + rows] = logp.gather(-1, labels[s : s + rows, None]).squeeze(-1)
            if entropy:
                ent[s : s + rows] = logp.exp().mul_(logp).sum(-1).neg_()
        ctx.save_for_backward(logits, labels, ent)
        ctx.temperature, ctx.rows = temperature, rows
        ctx.set_materialize_grads(False)  # an unused output's gradient arrives as None
        return lp, ent

    @staticmethod
    def backward(ctx, g_lp: Tensor | None, g_ent: Tensor | None):  # type: ignore[override]
        logits, labels, ent = ctx.saved_tensors
        if g_lp is None and (g_ent is None or ent.numel() == 0):
            return None, None, None, None, None
        t, rows = ctx.temperature, ctx.rows
        dtype = _compute_dtype(logits)
        grad = torch.empty_like(logits)
        for s in range(0, logits.shape[0], rows):
            logp = _log_softmax(logits[s : s + rows], t, dtype)
            p = logp.exp()
            if g_lp is not None:
                g = g_lp[s : s + rows, None].to(dtype)
                gz = p * g.neg()
                gz.scatter_add_(-1, labels[s : s + rows, None], g)
            else:
                gz = torch.zeros_like(p)
            if g_ent is not None:  # gz -= g_ent * p * (log p + H), in logp's memory
                h, ge = ent[s : s + rows, None], g_ent[s : s + rows, None].to(dtype)
                gz.sub_(logp.add_(h).mul_(p).mul_(ge))
            if t != 1.0:
                gz.div_(t)
            grad[s : s + rows] = gz
        return grad, None, None, None, None
