"""Advantage estimation for PPO (GAE) and GRPO (group-normalised scores), as plain tensor functions.

    python -m pytest tests/algo -q          # golden values, hand-computed

All per-token tensors are [batch, T] over response tokens only; `mask` is 1 on real tokens and 0
on right padding. Nothing here knows about models or configs, so it is tested on hand-computed
numbers: `pytest tests/algo/test_advantages.py`.
"""

from __future__ import annotations

import torch
from torch import Tensor

WHITEN_EPS = 1e-8


def _count(mask: Tensor, dim: int | None) -> Tensor:
    """Number of masked entries, with empty slices counted as 1 so that sum / count gives 0.

    Substituting before dividing (not `where` after) keeps gradients finite on empty rows.
    """
    count = mask.sum() if dim is None else mask.sum(dim)
    return torch.where(count > 0, count, torch.ones_like(count))


def masked_mean(x: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """Mean of `x` over entries where `mask` is set (over all of them, or along `dim`).

    An empty mask gives 0 rather than NaN, so an all-padding micro-batch cannot poison a loss.
    """
    mask = mask.to(x.dtype)
    total = (x * mask).sum() if dim is None else (x * mask).sum(dim)
    return total / _count(mask, dim)


def masked_var(x: Tensor, mask: Tensor, unbiased: bool = True) -> Tensor:
    """Variance of `x` over all masked entries (Bessel-corrected when `unbiased`)."""
    mask = mask.to(x.dtype)
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean) ** 2, mask)
    if unbiased:
        # One host sync per call; worth it to fail loudly instead of returning inf.
        n = int(mask.sum().item())
        if n < 2:
            raise ValueError(
                f"masked_var(unbiased=True) needs at least 2 masked entries, got {n}: "
                "is the batch all padding?"
            )
        var = var * n / (n - 1)
    return var


def masked_whiten(x: Tensor, mask: Tensor, shift_mean: bool = True) -> Tensor:
    """Normalise `x` to unit variance (and zero mean if `shift_mean`) over the masked entries.

    Padding positions come back as 0 so that they can never be mistaken for signal downstream.
    """
    mask = mask.to(x.dtype)
    mean = masked_mean(x, mask)
    var = masked_var(x, mask)
    whitened = (x - mean) * torch.rsqrt(var + WHITEN_EPS)
    if not shift_mean:
        whitened = whitened + mean
    return whitened * mask


def gae(
    token_rewards: Tensor, values: Tensor, mask: Tensor, gamma: float, lam: float
) -> tuple[Tensor, Tensor]:
    """Generalised Advantage Estimation, backwards over T; returns (advantages, returns).

    The episode ends at the last real token, so the value after it is 0. Rewards and values at
    padding are zeroed first: with right padding the "next value" of the last real token is then
    0, and a padded position's delta and running advantage stay 0. returns = advantages + values.
    No whitening here; the caller decides.
    """
    mask = mask.to(values.dtype)
    rewards = token_rewards * mask
    values = values * mask
    batch, length = values.shape
    advantages = torch.zeros_like(values)
    last_adv = values.new_zeros(batch)
    next_value = values.new_zeros(batch)
    for t in reversed(range(length)):
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        last_adv = (delta + gamma * lam * last_adv) * mask[:, t]
        advantages[:, t] = last_adv
        next_value = values[:, t]
    returns = (advantages + values) * mask
    return advantages, returns


def grpo_advantages(
    scores: Tensor,
    group_size: int,
    mask: Tensor,
    norm_by_std: bool = True,
    eps: float = 1e-6,
) -> Tensor:
    """GRPO advantages: each score relative to its group, broadcast over the response tokens.

    Rows [k*group_size, (k+1)*group_size) are samples of the same prompt. The advantage is
    (score - group mean) / (group std + eps), with the unbiased std as in DeepSeekMath and verl.
    A group of one is rejected: its std is undefined and its advantage would always be 0.
    """
    if group_size < 2:
        raise ValueError(
            f"group_size={group_size}: GRPO needs at least 2 samples per prompt "
            "(the group std is undefined and every advantage would be 0)"
        )
    if scores.dim() != 1 or scores.numel() % group_size != 0:
        raise ValueError(
            f"scores of shape {tuple(scores.shape)} cannot be split into groups of "
            f"{group_size}: expected a 1-D tensor whose length is a multiple of group_size"
        )
    scores = scores.float() if not scores.is_floating_point() else scores
    groups = scores.view(-1, group_size)
    centered = groups - groups.mean(dim=1, keepdim=True)
    if norm_by_std:
        centered = centered / (groups.std(dim=1, unbiased=True, keepdim=True) + eps)
    return centered.reshape(-1, 1) * mask.to(scores.dtype)


def token_level_rewards(
    scores: Tensor,
    mask: Tensor,
    kl: Tensor | None = None,
    kl_coef: float = 0.0,
) -> Tensor:
    """Per-token rewards: the sequence score on each row's last real token, minus kl_coef * kl.

    This is the KL-in-reward shaping of InstructGPT and verl. Rows with an empty response get
    all zeros. Assumes right padding, so the last real token sits at index length - 1.
    """
    if kl is None and kl_coef != 0.0:
        raise ValueError(f"kl_coef={kl_coef} but no kl tensor was given")
    dtype = scores.dtype if scores.is_floating_point() else torch.float32
    mask = mask.to(dtype)
    lengths = mask.sum(dim=1).long()
    last = (lengths - 1).clamp(min=0)
    placed = (scores.to(dtype) * (lengths > 0).to(dtype)).unsqueeze(1)
    rewards = torch.zeros(mask.shape, dtype=dtype, device=mask.device)
    rewards.scatter_(1, last.unsqueeze(1), placed)
    if kl is not None:
        rewards = rewards - kl_coef * kl.to(dtype) * mask
    return rewards
