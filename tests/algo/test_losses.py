"""Golden-number tests for hpc_ppo.algo.losses: `pytest tests/algo/test_losses.py`."""

from __future__ import annotations

import math

import pytest
import torch

from hpc_ppo.algo.losses import (
    aggregate,
    kl_penalty,
    policy_loss,
    value_loss,
)


def t(rows: list) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float32)


def close(actual: torch.Tensor, expected: list | float, atol: float = 1e-5) -> None:
    torch.testing.assert_close(
        actual, torch.tensor(expected, dtype=actual.dtype), atol=atol, rtol=0
    )


def test_aggregate_modes_differ_on_unequal_lengths() -> None:
    # row 0: 3 tokens (1, 2, 3); row 1: 1 token (10); row 2: empty (its 7s must be ignored)
    # token-mean = (1 + 2 + 3 + 10) / 4 = 4
    # seq-mean   = mean(6 / 3, 10 / 1) = mean(2, 10) = 6   (the empty row is left out)
    loss_mat = t([[1.0, 2.0, 3.0], [10.0, 0.0, 0.0], [7.0, 7.0, 7.0]])
    mask = t([[1, 1, 1], [1, 0, 0], [0, 0, 0]])
    close(aggregate(loss_mat, mask, "token-mean"), 4.0)
    close(aggregate(loss_mat, mask, "seq-mean"), 6.0)


def test_aggregate_unknown_mode_lists_allowed() -> None:
    with pytest.raises(ValueError, match=r"'seq-sum'.*\['token-mean', 'seq-mean'\]"):
        aggregate(t([[1.0]]), t([[1]]), "seq-sum")


# Five real tokens plus one padded one (ratio 3, advantage 5) that would clip if counted.
# clip_ratio = 0.2 -> clip range [0.8, 1.2]; loss = max(-A*r, -A*clip(r)):
#   A= 1, r=1.5: max(-1.5, -1.2) = -1.2  clipped branch active
#   A= 1, r=0.9: max(-0.9, -0.9) = -0.9  equal: not counted as clipped
#   A=-1, r=0.5: max( 0.5,  0.8) =  0.8  clipped branch active
#   A=-1, r=1.1: max( 1.1,  1.1) =  1.1
#   A= 1, r=0.5: max(-0.5, -0.8) = -0.5  pessimistic bound keeps the unclipped branch
# token-mean loss = (-1.2 - 0.9 + 0.8 + 1.1 - 0.5) / 5 = -0.14; clipfrac = 2 / 5
RATIOS = [1.5, 0.9, 0.5, 1.1, 0.5, 3.0]
ADVANTAGES = t([[1.0, 1.0, -1.0, -1.0, 1.0, 5.0]])
POLICY_MASK = t([[1, 1, 1, 1, 1, 0]])


def _logprobs() -> tuple[torch.Tensor, torch.Tensor]:
    old = t([[-1.0] * 6])
    return (old + torch.log(t([RATIOS]))).requires_grad_(True), old


def test_policy_loss_golden_clipfrac_and_stats() -> None:
    logprobs, old = _logprobs()
    loss, stats = policy_loss(logprobs, old, ADVANTAGES, POLICY_MASK, clip_ratio=0.2)
    close(loss, -0.14)
    close(stats["clipfrac"], 0.4)
    close(stats["ratio_mean"], 0.9)  # (1.5 + 0.9 + 0.5 + 1.1 + 0.5) / 5
    # k3 of KL(old || new) per token is r - 1 - log r:
    expected_kl = sum(r - 1 - math.log(r) for r in RATIOS[:5]) / 5  # = 0.0981759
    close(stats["approx_kl"], expected_kl)
    assert all(v.dim() == 0 and not v.requires_grad for v in stats.values())


def test_policy_loss_gradient_vanishes_on_clipped_tokens() -> None:
    logprobs, old = _logprobs()
    loss, _ = policy_loss(logprobs, old, ADVANTAGES, POLICY_MASK, clip_ratio=0.2)
    loss.backward()
    # d(-A * exp(logp - old)) / d logp = -A * r, divided by the 5 real tokens
    close(logprobs.grad, [[0.0, -0.9 / 5, 0.0, 1.1 / 5, -0.5 / 5, 0.0]])


def test_policy_loss_clip_higher() -> None:
    # clip_ratio_high = 0.6 -> range [0.8, 1.6]: the r=1.5 token is no longer clipped
    # loss = (-1.5 - 0.9 + 0.8 + 1.1 - 0.5) / 5 = -0.2; clipfrac = 1 / 5
    logprobs, old = _logprobs()
    loss, stats = policy_loss(
        logprobs, old, ADVANTAGES, POLICY_MASK, clip_ratio=0.2, clip_ratio_high=0.6
    )
    close(loss, -0.2)
    close(stats["clipfrac"], 0.2)


def test_policy_loss_seq_mean() -> None:
    # Row 0 = the five tokens above (mean -0.7 / 5 = -0.14); row 1 = one token A=2, r=1 -> -2.
    # seq-mean = (-0.14 - 2) / 2 = -1.07  (token-mean would be (-0.7 - 2) / 6 = -0.45)
    logprobs, old = _logprobs()
    logprobs2 = torch.cat([logprobs, t([[-1.0] * 6])])
    old2 = torch.cat([old, old])
    adv2 = torch.cat([ADVANTAGES, t([[2.0] + [0.0] * 5])])
    mask2 = torch.cat([POLICY_MASK, t([[1, 0, 0, 0, 0, 0]])])
    loss, _ = policy_loss(logprobs2, old2, adv2, mask2, clip_ratio=0.2, agg="seq-mean")
    close(loss, -1.07)
    loss_tok, _ = policy_loss(logprobs2, old2, adv2, mask2, clip_ratio=0.2)
    close(loss_tok, -0.45)


# clip_range = 0.2, old = 0.5 everywhere:
#   v=1.0, R=2.0: v_clip=0.7; (v-R)^2=1.00, (v_clip-R)^2=1.69 -> 1.69 (clipped term active)
#   v=0.5, R=0.0: v_clip=0.5; both 0.25                     -> 0.25
#   v=0.0, R=0.4: v_clip=0.3; 0.16 vs 0.01                  -> 0.16
# loss = 0.5 * (1.69 + 0.25 + 0.16) / 3 = 0.35; unclipped: 0.5 * (1 + 0.25 + 0.16) / 3 = 0.235
VALUES = t([[1.0, 0.5, 0.0, 9.0]])
OLD_VALUES = t([[0.5, 0.5, 0.5, 0.5]])
RETURNS = t([[2.0, 0.0, 0.4, -9.0]])
VALUE_MASK = t([[1, 1, 1, 0]])


def test_value_loss_clipped_golden() -> None:
    loss, stats = value_loss(VALUES, OLD_VALUES, RETURNS, VALUE_MASK, clip_range=0.2)
    close(loss, 0.35)
    close(stats["vf_clipfrac"], 1.0 / 3.0)
    close(stats["value_mean"], 0.5)  # (1.0 + 0.5 + 0.0) / 3, padding 9.0 ignored


def test_value_loss_unclipped() -> None:
    loss, stats = value_loss(VALUES, OLD_VALUES, RETURNS, VALUE_MASK, clip_range=None)
    close(loss, 0.235)
    close(stats["vf_clipfrac"], 0.0)


def test_kl_penalty_estimators_golden() -> None:
    # logp = [-1, -2], ref = [-1.5, -1]; log p - log ref = [0.5, -1]
    logp, ref = t([-1.0, -2.0]), t([-1.5, -1.0])
    close(kl_penalty(logp, ref, "k1"), [0.5, -1.0])
    close(kl_penalty(logp, ref, "k2"), [0.125, 0.5])  # 0.5 * d^2
    # k3 with d = ref - logp = [-0.5, 1]: exp(-0.5) + 0.5 - 1 = 0.1065307; e - 2 = 0.7182818
    close(kl_penalty(logp, ref, "k3"), [0.1065307, 0.7182818])


def test_kl_penalty_k3_is_clamped_and_finite() -> None:
    # ref - logp = -100 clamps to -20 -> exp(-20) + 19; +100 clamps to 20 -> exp(20) - 21
    out = kl_penalty(t([0.0, 0.0]), t([-100.0, 100.0]), "k3")
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, t([math.exp(-20) + 19, math.exp(20) - 21]))


def test_kl_penalty_unknown_estimator_lists_allowed() -> None:
    with pytest.raises(ValueError, match=r"'k4'.*\['k1', 'k2', 'k3'\]"):
        kl_penalty(t([0.0]), t([0.0]), "k4")


def test_truncated_is_weights_golden_and_policy_loss_scaling():
    from hpc_ppo.algo.losses import truncated_is_weights

    old = torch.tensor([[0.0, -1.0, -2.0]])
    engine = torch.tensor([[0.0, -2.0, -1.0]])
    # ratios exp(0)=1, exp(1)=2.718 -> capped at 2, exp(-1)=0.3679
    w = truncated_is_weights(old, engine, cap=2.0)
    torch.testing.assert_close(w, torch.tensor([[1.0, 2.0, 0.36787944]]))
    logp = old.clone()
    adv = torch.tensor([[1.0, 1.0, 1.0]])
    mask = torch.ones(1, 3)
    # at ratio 1 each token's term is -A = -1; weighted token-mean = -(1 + 2 + 0.3679) / 3
    loss, _ = policy_loss(logp, old, adv, mask, 0.2, token_weights=w)
    torch.testing.assert_close(loss, torch.tensor(-(1 + 2 + 0.36787944) / 3))
