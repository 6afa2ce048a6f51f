"""hpc_ppo/advantages.py, the advantage stage: the KL to the reference it reports
(`actor/kl_ref`) on a hand-computed example.

Run: python -m pytest tests/test_advantage_stage.py -q

(Not test_advantages.py: tests/ has no __init__.py, so test file names must be unique across
folders, and tests/algo/test_advantages.py holds the golden tests of the tensor functions.)
"""

from __future__ import annotations

import math

import pytest
import torch

from hpc_ppo.advantages import compute_advantages
from hpc_ppo.batch import RolloutBatch
from hpc_ppo.config import AlgoConfig


def batch(ref_logprobs: list[list[float]] | None) -> RolloutBatch:
    """Two responses of one prompt: 2 tokens and 1 token, right-padded to 3."""
    t = {
        "input_ids": torch.zeros(2, 4, dtype=torch.long),
        "response_mask": torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]]),
        "old_logprobs": torch.tensor([[-1.0, -2.0, 0.0], [-0.5, 0.0, 0.0]]),
        "scores": torch.tensor([1.0, 0.0]),
    }
    if ref_logprobs is not None:
        t["ref_logprobs"] = torch.tensor(ref_logprobs)
    return RolloutBatch(1, t)


def test_k3_kl_to_the_reference_is_the_mean_over_response_tokens():
    # ref - old = -0.5, 1 and 0 on the three response tokens; k3 = exp(d) - d - 1:
    # 0.1065307, 0.7182818 and 0, mean 0.2749375. The padding (d = 9) must not count.
    b = batch([[-1.5, -1.0, 9.0], [-0.5, 0.0, 9.0]])
    algo = AlgoConfig(name="grpo", kl_coef=0.01, kl_mode="loss", kl_estimator="k3")
    kl = compute_advantages(algo, 2, b)
    assert kl == pytest.approx((math.exp(-0.5) - 0.5 + math.e - 2) / 3, abs=1e-6)
    assert kl == pytest.approx(0.2749375, abs=1e-6)


@pytest.mark.parametrize("estimator", ["k1", "k2", "k3"])
def test_kl_is_zero_when_the_policy_is_the_reference(estimator):
    b = batch([[-1.0, -2.0, 5.0], [-0.5, 7.0, 0.0]])  # equal on every response token
    algo = AlgoConfig(name="grpo", kl_coef=0.01, kl_estimator=estimator)
    assert compute_advantages(algo, 2, b) == 0.0


def test_without_a_reference_the_kl_is_zero_and_advantages_are_set():
    b = batch(None)
    assert compute_advantages(AlgoConfig(name="grpo"), 2, b) == 0.0
    # GRPO: (score - group mean) / group std on each response token: +-1/sqrt(2), padding 0.
    s = 1 / math.sqrt(2)
    torch.testing.assert_close(b["advantages"], torch.tensor([[s, s, 0.0], [-s, 0.0, 0.0]]))
