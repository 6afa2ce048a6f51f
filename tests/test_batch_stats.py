"""metrics.batch_stats on a hand-computed batch (one rank, no process group).

Run: python -m pytest tests/test_batch_stats.py -q
"""

from __future__ import annotations

import pytest
import torch

from hpc_ppo.batch import RolloutBatch
from hpc_ppo.metrics import batch_stats


def test_lengths_advantages_returns_and_explained_variance() -> None:
    # Two rows: prompt width 2 (row 0 has one pad), responses of 2 and 1 tokens.
    attention = torch.tensor([[0, 1, 1, 1], [1, 1, 1, 0]])
    response_mask = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    batch = RolloutBatch(
        2,
        {
            "input_ids": torch.zeros(2, 4, dtype=torch.long),
            "attention_mask": attention,
            "response_mask": response_mask,
            "advantages": torch.tensor([[1.0, -1.0], [2.0, 99.0]]),  # 99: a pad, not counted
            "returns": torch.tensor([[1.0, 2.0], [3.0, 99.0]]),
            "values": torch.tensor([[1.0, 2.0], [2.0, 99.0]]),
        },
    )
    s = batch_stats(batch)
    assert (s["prompt/length_mean"], s["prompt/length_min"], s["prompt/length_max"]) == (1.5, 1, 2)
    assert (s["response/length_min"], s["response/length_max"]) == (1, 2)
    assert "response/length_mean" not in s  # step_metrics logs it
    assert s["critic/advantages_mean"] == pytest.approx(2 / 3)
    assert (s["critic/advantages_min"], s["critic/advantages_max"]) == (-1, 2)
    assert (s["critic/returns_min"], s["critic/returns_max"]) == (1, 3)
    # returns - values = [0, 0, 1]: Var 2/9; Var(returns) = 2/3 -> 1 - (2/9)/(2/3) = 2/3
    assert s["critic/vf_explained_var"] == pytest.approx(2 / 3)


def test_grpo_batch_has_no_critic_statistics() -> None:
    batch = RolloutBatch(
        1,
        {
            "input_ids": torch.zeros(1, 3, dtype=torch.long),
            "attention_mask": torch.ones(1, 3, dtype=torch.long),
            "response_mask": torch.ones(1, 2),
            "advantages": torch.ones(1, 2),
        },
    )
    s = batch_stats(batch)
    assert "critic/vf_explained_var" not in s and "critic/returns_mean" not in s
    assert s["critic/advantages_max"] == 1
