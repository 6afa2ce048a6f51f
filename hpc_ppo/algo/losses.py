"""PPO/GRPO losses and KL estimators, as plain tensor functions (log-probs and entropies:
logits.py).

    python -m pytest tests/algo -q          # golden values, hand-computed

Per-token tensors are [batch, T] over response tokens; `mask` is 1 on real tokens and 0 on right
padding. Loss statistics are returned as detached 0-dim tensors, so logging them costs no host
sync until the caller asks. Tested by `pytest tests/algo/test_losses.py`.
"""

from __future__ import annotations

import torch
from torch import Tensor

from hpc_ppo.algo.advantages import masked_mean

AGG_MODES = ("token-mean", "seq-mean")
KL_ESTIMATORS = ("k1", "k2", "k3")
# exp() of a log-ratio beyond this overflows float32 long before it carries useful signal.
LOG_RATIO_CLAMP = 20.0


def aggregate(loss_mat: Tensor, mask: Tensor, mode: str) -> Tensor:
    """Reduce a [batch, T] loss matrix to a scalar.

    "token-mean": every real token weighs the same (long answers dominate).
    "seq-mean": every row weighs the same; rows without tokens are left out.
    Simplification: the mean is over this batch only; normalising across micro-batches or
    ranks is the caller's job.
    """
    if mode == "token-mean":
        return masked_mean(loss_mat, mask)
    if mode == "seq-mean":
        mask = mask.to(loss_mat.dtype)
        row_mean = masked_mean(loss_mat, mask, dim=-1)
        has_tokens = (mask.sum(dim=-1) > 0).to(loss_mat.dtype)
        return masked_mean(row_mean, has_tokens)
    raise ValueError(f"unknown loss aggregation mode {mode!r}: expected one of {list(AGG_MODES)}")


def kl_penalty(logprobs: Tensor, ref_logprobs: Tensor, estimator: str) -> Tensor:
    """Per-token estimate of KL(policy || ref) from samples of the policy (Schulman's k1/k2/k3).

    k1 = log p - log ref (unbiased, can be negative); k2 = 0.5 * (log p - log ref)^2 (biased,
    non-negative); k3 = exp(ref - log p) - (ref - log p) - 1 (unbiased and non-negative), with
    the log-ratio clamped to [-20, 20] so exp() stays finite.
    """
    if estimator == "k1":
        return logprobs - ref_logprobs
    if estimator == "k2":
        return 0.5 * (logprobs - ref_logprobs) ** 2
    if estimator == "k3":
        log_ratio = torch.clamp(ref_logprobs - logprobs, -LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
        return torch.exp(log_ratio) - log_ratio - 1.0
    raise ValueError(f"unknown KL estimator {estimator!r}: expected one of {list(KL_ESTIMATORS)}")


def policy_loss(
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    mask: Tensor,
    clip_ratio: float,
    clip_ratio_high: float | None = None,
    agg: str = "token-mean",
    token_weights: Tensor | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """PPO clipped surrogate: max(-A * ratio, -A * clip(ratio, 1 - eps_low, 1 + eps_high)).

    `token_weights` (detached) scale each token's term before aggregation, e.g. the truncated
    importance weights of `truncated_is_weights`.

    `clip_ratio_high` (DAPO's clip-higher) defaults to `clip_ratio`. The log-ratio is clamped to
    [-20, 20] before exp() for stability. Stats: "clipfrac" (share of real tokens where the
    clipped branch is strictly larger, i.e. carries no gradient), "approx_kl" (k3 estimate of
    KL(old || new), which is non-negative), "ratio_mean".
    """
    high = clip_ratio if clip_ratio_high is None else clip_ratio_high
    log_ratio = torch.clamp(logprobs - old_logprobs, -LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip_ratio, 1.0 + high)
    per_token = torch.maximum(unclipped, clipped)
    if token_weights is not None:
        per_token = per_token * token_weights.detach()
    loss = aggregate(per_token, mask, agg)
    with torch.no_grad():
        stats = {
            "clipfrac": masked_mean((clipped > unclipped).to(ratio.dtype), mask),
            # Samples come from the old policy, so KL(old || new) is k3 with the roles swapped.
            "approx_kl": masked_mean(kl_penalty(old_logprobs, logprobs, "k3"), mask),
            "ratio_mean": masked_mean(ratio, mask),
        }
    return loss, {k: v.detach() for k, v in stats.items()}


def truncated_is_weights(old_logprobs: Tensor, behaviour_logprobs: Tensor, cap: float) -> Tensor:
    """min(pi_old / pi_behaviour, cap) per token: corrects for the rollout engine sampling from a
    slightly different distribution than the trainer's policy (bf16 kernels, another
    implementation), truncated so rare large ratios cannot dominate (Yao et al., 2025, TIS)."""
    log_ratio = torch.clamp(old_logprobs - behaviour_logprobs, -LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
    return torch.exp(log_ratio).clamp(max=cap).detach()


def value_loss(
    values: Tensor,
    old_values: Tensor,
    returns: Tensor,
    mask: Tensor,
    clip_range: float | None,
    agg: str = "token-mean",
) -> tuple[Tensor, dict[str, Tensor]]:
    """Critic loss 0.5 * max((v - R)^2, (v_clipped - R)^2), v_clipped = old + clamp(v - old, +-c).

    Clipping keeps the value head from moving far from the values the advantages were built on;
    `clip_range=None` gives the plain squared error. Stats: "vf_clipfrac" (share of real tokens
    where the clipped term is strictly larger), "value_mean".
    """
    unclipped = (values - returns) ** 2
    if clip_range is None:
        loss_mat = unclipped
        clip_active = torch.zeros_like(unclipped)
    else:
        v_clipped = old_values + torch.clamp(values - old_values, -clip_range, clip_range)
        clipped = (v_clipped - returns) ** 2
        loss_mat = torch.maximum(unclipped, clipped)
        clip_active = (clipped > unclipped).to(values.dtype)
    loss = 0.5 * aggregate(loss_mat, mask, agg)
    stats = {
        "vf_clipfrac": masked_mean(clip_active, mask).detach(),
        "value_mean": masked_mean(values, mask).detach(),
    }
    return loss, stats
