"""The advantage stage: token rewards (score, optional KL penalty) -> GAE or GRPO advantages.

    hpc-ppo run configs/tiny-cpu.yaml algo.name=grpo algo.kl_coef=0.01    # every step

The math is in hpc_ppo.algo (pure tensor functions with golden tests); this stage applies it
to a step's batch and whitens GAE advantages over the tokens of *all* ranks, so every rank
scales alike.
"""

from __future__ import annotations

import math

import torch

from hpc_ppo import dist as hdist
from hpc_ppo.algo.advantages import gae, grpo_advantages, masked_mean, token_level_rewards
from hpc_ppo.algo.losses import kl_penalty
from hpc_ppo.batch import RolloutBatch
from hpc_ppo.config import AlgoConfig


def compute_advantages(algo: AlgoConfig, group_size: int, batch: RolloutBatch) -> float:
    """Set `advantages` (and `returns` for PPO) on the batch; returns the mean KL to the
    reference (0.0 without one). `group_size` is rollout.n: GRPO normalises per prompt group."""
    mask = batch["response_mask"]
    kl = None
    if "ref_logprobs" in batch:
        kl = kl_penalty(batch["old_logprobs"], batch["ref_logprobs"], algo.kl_estimator)
    in_reward = kl is not None and algo.kl_mode == "reward"
    rewards = token_level_rewards(
        batch["scores"], mask, kl if in_reward else None, algo.kl_coef if in_reward else 0.0
    )
    if algo.name == "ppo":
        adv, ret = gae(rewards, batch["values"], mask, algo.gamma, algo.lam)
        batch["returns"] = ret
        if algo.whiten_advantages:
            adv = global_whiten(adv, mask)
    else:
        adv = grpo_advantages(batch["scores"], group_size, mask)
    batch["advantages"] = adv
    return float(masked_mean(kl, mask)) if kl is not None else 0.0


def global_whiten(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Whiten over the masked tokens of all ranks, so every rank scales advantages alike."""
    s = hdist.all_reduce(
        [float((x * mask).sum()), float((x * x * mask).sum()), float(mask.sum())], "sum"
    )
    n = max(s[2], 1.0)
    mean = s[0] / n
    var = max(s[1] / n - mean * mean, 0.0) * n / max(n - 1, 1.0)
    return (x - mean) / math.sqrt(var + 1e-8) * mask
