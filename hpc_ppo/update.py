"""Advantages and the PPO update over one step's samples (actor, and critic for PPO).

Losses are the plain tensor functions of hpc_ppo.algo; this module only batches them:
`algo.ppo_epochs` passes over shuffled mini-batches, each split into micro-batches (see
microbatch.py) whose gradients are accumulated with weights that make the sum equal to the
loss over the whole mini-batch (token share for token-mean, row share for seq-mean).
"""

from __future__ import annotations

import math
import time

import torch
from torch import nn

from hpc_ppo import dist as hdist
from hpc_ppo import microbatch
from hpc_ppo.algo.advantages import gae, grpo_advantages, masked_mean, token_level_rewards
from hpc_ppo.algo.losses import (
    aggregate,
    kl_penalty,
    policy_loss,
    truncated_is_weights,
    value_loss,
)
from hpc_ppo.batch import RolloutBatch, critic_forward, policy_forward
from hpc_ppo.config import Config


def compute_advantages(cfg: Config, batch: RolloutBatch) -> float:
    """Token rewards and advantages (in place); returns the mean KL to the reference."""
    a, mask = cfg.algo, batch["response_mask"]
    kl = None
    if "ref_logprobs" in batch.t:
        kl = kl_penalty(batch["old_logprobs"], batch["ref_logprobs"], a.kl_estimator)
    in_reward = kl is not None and a.kl_mode == "reward"
    rewards = token_level_rewards(
        batch["scores"], mask, kl if in_reward else None, a.kl_coef if in_reward else 0.0
    )
    if a.name == "ppo":
        adv, ret = gae(rewards, batch["values"], mask, a.gamma, a.lam)
        batch["returns"] = ret
        if a.whiten_advantages:
            adv = global_whiten(adv, mask)
    else:
        adv = grpo_advantages(batch["scores"], cfg.rollout.n, mask)
    batch["advantages"] = adv
    return float(masked_mean(kl, mask)) if kl is not None else 0.0


class PPOUpdate:
    """Optimizer steps for the policy (and critic) over one step's samples on this rank."""

    def __init__(
        self, cfg: Config, policy: nn.Module, actor_opt, critic: nn.Module | None, critic_opt
    ):
        self.cfg, self.policy, self.actor_opt = cfg, policy, actor_opt
        self.critic, self.critic_opt = critic, critic_opt

    def run(self, batch: RolloutBatch, seed: int) -> dict[str, float]:
        a, t = self.cfg.algo, self.cfg.trainer
        num_mini = t.batch_size // a.mini_batch_size
        gen = torch.Generator().manual_seed(seed)
        sums: dict[str, float] = {}
        count = 0
        for _ in range(a.ppo_epochs):
            order = torch.randperm(len(batch), generator=gen)
            edges = [round(i * len(batch) / num_mini) for i in range(num_mini + 1)]
            for i in range(num_mini):
                mini = batch.select(order[edges[i] : edges[i + 1]].to(batch["input_ids"].device))
                parts = microbatch.plan(mini, t.micro_batch_size, t.max_tokens_per_micro_batch)
                start = time.perf_counter()
                stats = self._actor_step(mini, parts)  # ends in a host sync (grad norm)
                stats["time/update_actor"] = (time.perf_counter() - start) * num_mini * a.ppo_epochs
                if self.critic is not None:
                    start = time.perf_counter()
                    stats.update(self._critic_step(mini, parts))
                    stats["time/update_critic"] = (
                        (time.perf_counter() - start) * num_mini * a.ppo_epochs
                    )
                for k, v in stats.items():
                    sums[k] = sums.get(k, 0.0) + v
                count += 1
        # Means over mini-batches; the time/ entries were scaled so their mean is the total.
        return {k: v / count for k, v in sums.items()}

    def _weights(self, mini: RolloutBatch, parts: list[torch.Tensor]) -> list[float]:
        mask = mini["response_mask"]
        if self.cfg.algo.loss_agg == "token-mean":
            sizes = [float(mask[idx.to(mask.device)].sum()) for idx in parts]
        else:
            sizes = [float((mask[idx.to(mask.device)].sum(-1) > 0).sum()) for idx in parts]
        total = sum(sizes) or 1.0
        return [s / total for s in sizes]

    def _actor_step(self, mini: RolloutBatch, parts: list[torch.Tensor]) -> dict[str, float]:
        a = self.cfg.algo
        self.actor_opt.zero_grad(set_to_none=True)
        sums: dict[str, float] = {}
        for idx, weight in zip(parts, self._weights(mini, parts), strict=True):
            micro = microbatch.trimmed(mini.select(idx.to(mini["input_ids"].device)))
            mask = micro["response_mask"]
            logprobs, entropy = policy_forward(
                self.policy,
                micro,
                self.cfg.rollout.temperature,
                with_entropy=True,
                entropy_grad=a.entropy_coef > 0,
            )
            weights = None
            if a.tis_cap is not None:  # the engine sampled; FSDP's old log-probs are the target
                weights = truncated_is_weights(
                    micro["old_logprobs"], micro["engine_logprobs"], a.tis_cap
                )
            pg, st = policy_loss(
                logprobs,
                micro["old_logprobs"],
                micro["advantages"],
                mask,
                a.clip_ratio,
                agg=a.loss_agg,
                token_weights=weights,
            )
            ent = aggregate(entropy, mask, a.loss_agg)
            loss = pg - a.entropy_coef * ent
            if "ref_logprobs" in micro.t and a.kl_mode == "loss":
                kl = aggregate(
                    kl_penalty(logprobs, micro["ref_logprobs"], a.kl_estimator), mask, a.loss_agg
                )
                loss = loss + a.kl_coef * kl
            (loss * weight).backward()
            _accumulate(
                sums,
                weight,
                {
                    "actor/pg_loss": pg,
                    "actor/entropy": ent,
                    "actor/clipfrac": st["clipfrac"],
                    "actor/approx_kl": st["approx_kl"],
                },
            )
        sums["actor/grad_norm"] = clip_and_step(
            self.policy, self.actor_opt, self.cfg.actor.grad_clip
        )
        return sums

    def _critic_step(self, mini: RolloutBatch, parts: list[torch.Tensor]) -> dict[str, float]:
        a = self.cfg.algo
        self.critic_opt.zero_grad(set_to_none=True)
        sums: dict[str, float] = {}
        for idx, weight in zip(parts, self._weights(mini, parts), strict=True):
            micro = microbatch.trimmed(mini.select(idx.to(mini["input_ids"].device)))
            values = critic_forward(self.critic, micro)
            vf, st = value_loss(
                values,
                micro["values"],
                micro["returns"],
                micro["response_mask"],
                a.value_clip,
                agg=a.loss_agg,
            )
            (a.vf_coef * vf * weight).backward()
            _accumulate(
                sums,
                weight,
                {
                    "critic/vf_loss": vf,
                    "critic/vf_clipfrac": st["vf_clipfrac"],
                    "critic/values_mean": st["value_mean"],
                },
            )
        sums["critic/grad_norm"] = clip_and_step(
            self.critic, self.critic_opt, self.cfg.critic.grad_clip
        )
        return sums


def _accumulate(sums: dict[str, float], weight: float, values: dict[str, torch.Tensor]) -> None:
    for k, v in values.items():
        sums[k] = sums.get(k, 0.0) + float(v.detach()) * weight


def clip_and_step(model: nn.Module, opt: torch.optim.Optimizer, max_norm: float) -> float:
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
    norm = norm.full_tensor() if hasattr(norm, "full_tensor") else norm
    if torch.isfinite(norm):
        opt.step()
    else:  # a NaN/inf gradient would poison the weights; every rank sees the same norm and skips
        opt.zero_grad(set_to_none=True)
    return float(norm)


def global_whiten(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Whiten over the masked tokens of all ranks, so every rank scales advantages alike."""
    s = hdist.all_reduce(
        [float((x * mask).sum()), float((x * x * mask).sum()), float(mask.sum())], "sum"
    )
    n = max(s[2], 1.0)
    mean = s[0] / n
    var = max(s[1] / n - mean * mean, 0.0) * n / max(n - 1, 1.0)
    return (x - mean) / math.sqrt(var + 1e-8) * mask
