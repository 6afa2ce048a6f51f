"""The update stage: optimizers, LR schedulers and the PPO epochs over one step's samples.

    hpc-ppo run configs/tiny-cpu.yaml algo.ppo_epochs=2 algo.mini_batch_size=8    # every step

`Optimization` builds AdamW and its LR schedule for the policy (and the critic for PPO), steps
them, and names what a checkpoint must hold (`states`). Losses are the plain tensor functions
of hpc_ppo.algo; this module only batches them: `algo.ppo_epochs` passes over shuffled
mini-batches, each split into micro-batches (batch.py) whose gradients are accumulated with
weights that make the sum equal to the loss over the whole mini-batch (token share for
token-mean, row share for seq-mean). A non-finite (NaN/inf) gradient norm skips that optimizer
step on every rank (they all see the same norm): a counted skip, not an error. The step's
`actor/skipped_updates` / `critic/skipped_updates` is the fraction of its optimizer steps so
skipped, and the trainer warns whenever it is above 0.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch
from torch import nn

from hpc_ppo.algo.losses import aggregate, kl_penalty, policy_loss, truncated_is_weights, value_loss
from hpc_ppo.batch import (
    MicroBatching,
    MicroPlan,
    RolloutBatch,
    critic_forward,
    micro_batches,
    plan_micro_batches,
    policy_forward,
)
from hpc_ppo.checkpoint import Checkpointable
from hpc_ppo.config import AlgoConfig, OptimConfig


@dataclass
class LRSchedule:
    """The LR multiplier of update step s (0 = a run's first step): a linear warmup over
    `warmup` steps, then constant, or a cosine / linear decay that reaches `min_ratio` at step
    `total` and stays there.

    A callable object, not a lambda, on purpose: LambdaLR saves a callable object's attributes
    with its state, so a resumed run continues on the horizon it started with, even where the
    resume raised trainer.total_steps (the LR then stays at lr * min_ratio past the old end).
    """

    kind: str  # constant, cosine, linear
    warmup: int
    total: int
    min_ratio: float

    def __call__(self, s: int) -> float:
        if s < self.warmup:
            return (s + 1) / self.warmup
        if self.kind == "constant":
            return 1.0
        progress = min(1.0, (s - self.warmup) / max(1, self.total - self.warmup))
        if self.kind == "cosine":
            shape = 0.5 * (1.0 + math.cos(math.pi * progress))
        else:
            shape = 1.0 - progress
        return self.min_ratio + (1.0 - self.min_ratio) * shape


def lr_schedule(oc: OptimConfig, total_steps: int) -> LRSchedule:
    """`oc`'s schedule over a run of `total_steps` steps (warmup in steps, or as a ratio)."""
    warmup = oc.warmup_steps or round(oc.warmup_ratio * total_steps)
    return LRSchedule(oc.lr_scheduler, warmup, total_steps, oc.min_lr_ratio)


def make_optimizer(
    name: str, model: nn.Module, oc: OptimConfig, total_steps: int
) -> Checkpointable:
    """AdamW over the trainable parameters, with `oc`'s LR schedule over `total_steps`."""
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=oc.lr, betas=oc.betas, weight_decay=oc.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_schedule(oc, total_steps))
    return Checkpointable(name, model, opt, sched)


class Optimization:
    """Optimizer steps for the policy (and critic) over one step's samples on this rank."""

    def __init__(
        self,
        algo: AlgoConfig,
        micro: MicroBatching,
        mini_batches: int,
        temperature: float,
        total_steps: int,
        policy: nn.Module,
        actor: OptimConfig,
        critic: nn.Module | None = None,
        critic_optim: OptimConfig | None = None,
        defer_grad_reduce: bool = False,
    ):
        self.algo, self.micro, self.temperature = algo, micro, temperature
        self.defer_grad_reduce = defer_grad_reduce  # trainer.defer_grad_reduce
        self.mini_batches = mini_batches  # trainer.batch_size // algo.mini_batch_size
        self.actor = make_optimizer("policy", policy, actor, total_steps)
        self.actor_clip = actor.grad_clip
        self.critic = None
        if critic is not None:
            if critic_optim is None:
                raise ValueError("Optimization: a critic needs its OptimConfig (cfg.critic)")
            self.critic = make_optimizer("critic", critic, critic_optim, total_steps)
            self.critic_clip = critic_optim.grad_clip

    @property
    def states(self) -> list[Checkpointable]:
        """What a checkpoint holds: each model with its optimizer and LR scheduler."""
        return [s for s in (self.actor, self.critic) if s is not None]

    def run(self, batch: RolloutBatch, seed: int) -> dict[str, float]:
        """`algo.ppo_epochs` passes of mini-batch steps, then one LR-schedule step. The stats
        include `actor/lr` (and `critic/lr`): the learning rate these updates used."""
        a, num_mini = self.algo, self.mini_batches
        gen = torch.Generator().manual_seed(seed)
        sums: dict[str, float] = {}
        count = 0
        for _ in range(a.ppo_epochs):
            order = torch.randperm(len(batch), generator=gen)
            edges = [round(i * len(batch) / num_mini) for i in range(num_mini + 1)]
            for i in range(num_mini):
                mini = batch.select(order[edges[i] : edges[i + 1]].to(batch["input_ids"].device))
                plan = plan_micro_batches(mini, self.micro)
                start = time.perf_counter()
                stats = self._actor_step(mini, plan)  # ends in a host sync (grad norm)
                stats["time/update_actor"] = (time.perf_counter() - start) * num_mini * a.ppo_epochs
                if self.critic is not None:
                    start = time.perf_counter()
                    stats.update(self._critic_step(mini, plan))
                    stats["time/update_critic"] = (
                        (time.perf_counter() - start) * num_mini * a.ppo_epochs
                    )
                for k, v in stats.items():
                    sums[k] = sums.get(k, 0.0) + v
                count += 1
        # Means over mini-batches; the time/ entries were scaled so their mean is the total.
        stats = {k: v / count for k, v in sums.items()}
        for key, state in (("actor/lr", self.actor), ("critic/lr", self.critic)):
            if state is not None:
                stats[key] = state.scheduler.get_last_lr()[0]
                state.scheduler.step()
        return stats

    def _actor_step(self, mini: RolloutBatch, plan: MicroPlan) -> dict[str, float]:
        a = self.algo
        self.actor.optimizer.zero_grad(set_to_none=True)
        sums: dict[str, float] = {}
        for i, ((_, micro), share) in enumerate(
            zip(micro_batches(mini, plan), loss_shares(mini, plan, a.loss_agg), strict=True)
        ):
            self._grad_sync(self.actor.model, last=i == len(plan) - 1)
            mask = micro["response_mask"]
            logprobs, entropy = policy_forward(
                self.actor.model,
                micro,
                self.temperature,
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
            if "ref_logprobs" in micro and a.kl_mode == "loss":
                kl = aggregate(
                    kl_penalty(logprobs, micro["ref_logprobs"], a.kl_estimator), mask, a.loss_agg
                )
                loss = loss + a.kl_coef * kl
            (loss * share).backward()
            _accumulate(
                sums,
                share,
                {
                    "actor/pg_loss": pg,
                    "actor/entropy": ent,
                    "actor/clipfrac": st["clipfrac"],
                    "actor/approx_kl": st["approx_kl"],
                },
            )
        norm = clip_and_step(self.actor.model, self.actor.optimizer, self.actor_clip)
        sums["actor/grad_norm"] = norm
        sums["actor/skipped_updates"] = 0.0 if math.isfinite(norm) else 1.0
        return sums

    def _critic_step(self, mini: RolloutBatch, plan: MicroPlan) -> dict[str, float]:
        a, critic = self.algo, self.critic
        assert critic is not None
        critic.optimizer.zero_grad(set_to_none=True)
        sums: dict[str, float] = {}
        for i, ((_, micro), share) in enumerate(
            zip(micro_batches(mini, plan), loss_shares(mini, plan, a.loss_agg), strict=True)
        ):
            self._grad_sync(critic.model, last=i == len(plan) - 1)
            values = critic_forward(critic.model, micro)
            vf, st = value_loss(
                values,
                micro["values"],
                micro["returns"],
                micro["response_mask"],
                a.value_clip,
                agg=a.loss_agg,
            )
            (a.vf_coef * vf * share).backward()
            _accumulate(
                sums,
                share,
                {
                    "critic/vf_loss": vf,
                    "critic/vf_clipfrac": st["vf_clipfrac"],
                    "critic/values_mean": st["value_mean"],
                },
            )
        norm = clip_and_step(critic.model, critic.optimizer, self.critic_clip)
        sums["critic/grad_norm"] = norm
        sums["critic/skipped_updates"] = 0.0 if math.isfinite(norm) else 1.0
        return sums

    def _grad_sync(self, model: nn.Module, last: bool) -> None:
        """With `defer_grad_reduce`, FSDP2 keeps this micro-batch's gradients unsharded and
        reduce-scatters the sum once, in the last one's backward: one collective per layer
        and mini-batch instead of one per micro-batch."""
        if self.defer_grad_reduce and hasattr(model, "set_requires_gradient_sync"):
            model.set_requires_gradient_sync(last)


def loss_shares(mini: RolloutBatch, plan: MicroPlan, loss_agg: str) -> list[float]:
    """Each micro-batch's share of the mini-batch loss: its tokens (token-mean) or its
    non-empty rows (seq-mean) over the mini-batch's; the shares sum to 1."""
    mask = mini["response_mask"]
    if loss_agg == "token-mean":
        sizes = [float(mask[rows.to(mask.device)].sum()) for rows in plan]
    else:
        sizes = [float((mask[rows.to(mask.device)].sum(-1) > 0).sum()) for rows in plan]
    total = sum(sizes) or 1.0
    return [s / total for s in sizes]


def _accumulate(sums: dict[str, float], weight: float, values: dict[str, torch.Tensor]) -> None:
    for k, v in values.items():
        sums[k] = sums.get(k, 0.0) + float(v.detach()) * weight


def clip_and_step(model: nn.Module, opt: torch.optim.Optimizer, max_norm: float) -> float:
    """Clip the gradient norm and step; a NaN/inf norm skips the step (and clears the grads)."""
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
    norm = norm.full_tensor() if hasattr(norm, "full_tensor") else norm
    if torch.isfinite(norm):
        opt.step()
    else:  # a NaN/inf gradient would poison the weights; every rank sees the same norm and skips
        opt.zero_grad(set_to_none=True)
    return float(norm)
