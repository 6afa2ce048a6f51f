"""Golden-number tests for hpc_ppo.algo.advantages: `pytest tests/algo/test_advantages.py`."""

from __future__ import annotations

import pytest
import torch

from hpc_ppo.algo.advantages import (
    gae,
    grpo_advantages,
    masked_mean,
    masked_var,
    masked_whiten,
    token_level_rewards,
)


def t(rows: list) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float32)


def close(actual: torch.Tensor, expected: list | float, atol: float = 1e-5) -> None:
    torch.testing.assert_close(
        actual, torch.tensor(expected, dtype=actual.dtype), atol=atol, rtol=0
    )


# x = [[1, 2, 3], [4, pad, pad]]: real entries 1, 2, 3, 4; the 100s must never be seen.
X = t([[1.0, 2.0, 3.0], [4.0, 100.0, 100.0]])
MASK = t([[1, 1, 1], [1, 0, 0]])


def test_masked_mean_ignores_padding() -> None:
    close(masked_mean(X, MASK), 2.5)  # (1 + 2 + 3 + 4) / 4
    close(masked_mean(X, MASK, dim=-1), [2.0, 4.0])  # per row: 6 / 3, 4 / 1
    close(masked_mean(X, MASK.bool()), 2.5)  # bool masks work too


def test_masked_mean_of_empty_mask_is_zero_with_finite_grad() -> None:
    x = X.clone().requires_grad_(True)
    out = masked_mean(x, torch.zeros_like(MASK), dim=-1)
    close(out, [0.0, 0.0])
    out.sum().backward()
    assert torch.isfinite(x.grad).all()


def test_masked_var_unbiased_and_biased() -> None:
    # deviations from 2.5: -1.5, -0.5, 0.5, 1.5 -> squares sum to 5
    close(masked_var(X, MASK), 5.0 / 3.0)  # Bessel: 5 / (4 - 1)
    close(masked_var(X, MASK, unbiased=False), 1.25)  # 5 / 4


def test_masked_var_needs_two_entries() -> None:
    with pytest.raises(ValueError, match="at least 2 masked entries, got 1"):
        masked_var(X, t([[0, 0, 0], [1, 0, 0]]))


def test_masked_whiten_golden_and_zero_padding() -> None:
    std = (5.0 / 3.0) ** 0.5
    expected = [[-1.5 / std, -0.5 / std, 0.5 / std], [1.5 / std, 0.0, 0.0]]
    white = masked_whiten(X, MASK)
    close(white, expected)  # -1.5 / 1.29099 = -1.16190 for the first entry
    close(masked_mean(white, MASK), 0.0)
    close(masked_var(white, MASK), 1.0, atol=1e-4)


def test_masked_whiten_without_shift_keeps_mean() -> None:
    white = masked_whiten(X, MASK, shift_mean=False)
    close(masked_mean(white, MASK), 2.5)
    close(white[1, 1:], [0.0, 0.0])


def test_gae_golden_1x3() -> None:
    # gamma = 0.9, lam = 0.8, so gamma * lam = 0.72; value after the last token is 0.
    # r = [0, 0, 1], v = [0.5, 0.2, 0.4]
    # t=2: delta = 1 + 0.9 * 0   - 0.4 =  0.60; A2 = 0.60
    # t=1: delta = 0 + 0.9 * 0.4 - 0.2 =  0.16; A1 = 0.16 + 0.72 * 0.60  = 0.592
    # t=0: delta = 0 + 0.9 * 0.2 - 0.5 = -0.32; A0 = -0.32 + 0.72 * 0.592 = 0.10624
    # returns = A + v = [0.60624, 0.792, 1.0]
    adv, ret = gae(t([[0.0, 0.0, 1.0]]), t([[0.5, 0.2, 0.4]]), t([[1, 1, 1]]), 0.9, 0.8)
    close(adv, [[0.10624, 0.592, 0.6]])
    close(ret, [[0.60624, 0.792, 1.0]])


def test_gae_padding_does_not_leak() -> None:
    # Row 1 has 2 real tokens; its padding holds reward 5 and value 100 that must be ignored.
    # r = [0.3, 1.0], v = [0.1, 0.7]:
    # t=1: A1 = 1.0 + 0 - 0.7 = 0.3
    # t=0: A0 = 0.3 + 0.9 * 0.7 - 0.1 + 0.72 * 0.3 = 0.83 + 0.216 = 1.046
    rewards = t([[0.0, 0.0, 1.0], [0.3, 1.0, 5.0]])
    values = t([[0.5, 0.2, 0.4], [0.1, 0.7, 100.0]])
    mask = t([[1, 1, 1], [1, 1, 0]])
    adv, ret = gae(rewards, values, mask, 0.9, 0.8)
    close(adv[1], [1.046, 0.3, 0.0])
    close(ret[1], [1.146, 1.0, 0.0])

    alone_adv, alone_ret = gae(rewards[1:, :2], values[1:, :2], mask[1:, :2], 0.9, 0.8)
    close(adv[1:, :2], alone_adv.tolist())
    close(ret[1:, :2], alone_ret.tolist())
    # and the padded row does not disturb the full-length one
    close(adv[0], [0.10624, 0.592, 0.6])


def test_gae_gamma_lam_one_is_reward_to_go_minus_value() -> None:
    # With gamma = lam = 1 the values telescope: A_t = sum_{k>=t} r_k - v_t.
    rewards, values = t([[1.0, 2.0, 3.0]]), t([[0.5, -1.0, 2.0]])
    adv, ret = gae(rewards, values, t([[1, 1, 1]]), 1.0, 1.0)
    close(adv, [[6.0 - 0.5, 5.0 + 1.0, 3.0 - 2.0]])
    close(ret, [[6.0, 5.0, 3.0]])


SCORES = t([1.0, 0.0, 0.0, 2.0, 4.0, 6.0])  # two groups of three


def test_grpo_two_groups_of_three() -> None:
    # group 1: mean 1/3, deviations (2/3, -1/3, -1/3), unbiased var (4/9 + 1/9 + 1/9) / 2 = 1/3,
    #          std 0.57735 -> (1.15470, -0.57735, -0.57735)
    # group 2: mean 4, deviations (-2, 0, 2), unbiased var 8 / 2 = 4, std 2 -> (-1, 0, 1)
    #          (a biased std, sqrt(8/3), would give 1.2247 instead of 1)
    mask = t([[1, 1, 1]] * 6)
    adv = grpo_advantages(SCORES, 3, mask)
    expected = [1.1547005, -0.5773503, -0.5773503, -1.0, 0.0, 1.0]
    close(adv, [[a] * 3 for a in expected])


def test_grpo_without_std_and_padding_zeroed() -> None:
    mask = t([[1, 1, 0], [1, 0, 0], [1, 1, 1], [0, 0, 0], [1, 1, 1], [1, 1, 0]])
    adv = grpo_advantages(SCORES, 3, mask, norm_by_std=False)
    centered = [2 / 3, -1 / 3, -1 / 3, -2.0, 0.0, 2.0]
    close(adv, [[c * m for m in row] for c, row in zip(centered, mask.tolist(), strict=True)])


def test_grpo_equal_scores_give_zero_not_nan() -> None:
    adv = grpo_advantages(t([1.0, 1.0, 1.0, 1.0]), 2, t([[1, 1]] * 4))
    close(adv, [[0.0, 0.0]] * 4)


def test_grpo_rejects_group_of_one_and_ragged_batch() -> None:
    with pytest.raises(ValueError, match="group_size=1: GRPO needs at least 2 samples"):
        grpo_advantages(SCORES, 1, t([[1]] * 6))
    with pytest.raises(ValueError, match="cannot be split into groups of 4"):
        grpo_advantages(SCORES, 4, t([[1]] * 6))


def test_token_level_rewards_score_on_last_token_minus_kl() -> None:
    # kl_coef = 0.5; padding kl (9.0) must be ignored; row 2 is an empty response.
    # row 0 (3 tokens): [-0.5*0.2, -0.5*0.4, 1 - 0.5*0.6] = [-0.1, -0.2, 0.7]
    # row 1 (1 token):  [2 - 0.5*1.0, 0, 0]              = [1.5, 0, 0]
    mask = t([[1, 1, 1], [1, 0, 0], [0, 0, 0]])
    kl = t([[0.2, 0.4, 0.6], [1.0, 9.0, 9.0], [9.0, 9.0, 9.0]])
    rewards = token_level_rewards(t([1.0, 2.0, 3.0]), mask, kl, kl_coef=0.5)
    close(rewards, [[-0.1, -0.2, 0.7], [1.5, 0.0, 0.0], [0.0, 0.0, 0.0]])


def test_token_level_rewards_without_kl_and_integer_scores() -> None:
    mask = torch.tensor([[True, True, False], [False, False, False]])
    rewards = token_level_rewards(torch.tensor([1, 2]), mask)
    assert rewards.dtype == torch.float32
    close(rewards, [[0.0, 1.0, 0.0], [0.0, 0.0, 0.0]])


def test_token_level_rewards_kl_coef_without_kl_raises() -> None:
    with pytest.raises(ValueError, match="kl_coef=0.1 but no kl tensor"):
        token_level_rewards(t([1.0]), t([[1, 1]]), kl_coef=0.1)
