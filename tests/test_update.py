"""update.py: micro-batch loss shares, the skipped step on a non-finite gradient, and one
`Optimization.run` on a tiny batch.

Run: python -m pytest tests/test_update.py -q

One process, no torch.distributed: the collectives of hpc_ppo.dist (the micro-batch count)
fall back to this process's values, and the models are plain (unsharded) modules.
"""

from __future__ import annotations

import copy
import dataclasses
import math

import pytest
import torch
from helpers import TINY
from torch import nn

from hpc_ppo import update
from hpc_ppo.batch import (
    MicroBatching,
    MicroPlan,
    RolloutBatch,
    collate,
    forward_all,
    policy_forward,
)
from hpc_ppo.config import AlgoConfig, OptimConfig, load_config
from hpc_ppo.model import load_critic, load_policy, tiny_tokenizer
from hpc_ppo.rollout.base import Sample
from hpc_ppo.update import Optimization, clip_and_step, loss_shares

TEMPERATURE = 0.7
NO_CLIP = OptimConfig(lr=1e-3, grad_clip=1e9)  # clipping would rescale the compared gradients


def samples(response_lengths: list[int]) -> list[Sample]:
    """One sample per length; prompts of different lengths, so rows need left padding."""
    out = []
    for i, r in enumerate(response_lengths):
        prompt = [7, 5, 10, 17, 40][: 2 + i % 4]
        response = [(3 * i + j) % 40 + 3 for j in range(r)]
        out.append(Sample(i // 2, prompt, response, [-1.0] * r, finished=False))
    return out


def models() -> tuple[nn.Module, nn.Module]:
    mc = load_config(TINY).model
    tok = tiny_tokenizer()
    return load_policy(mc, tok, seed=0), load_critic(mc, tok, seed=0)


def training_batch(policy: nn.Module, response_lengths: list[int]) -> RolloutBatch:
    """What the trainer hands Optimization.run: old log-probs of this policy, values,
    returns and advantages (random, fixed) on the response tokens."""
    batch = collate(samples(response_lengths), [0.0] * len(response_lengths), pad_id=0)
    mask = batch["response_mask"]
    gen = torch.Generator().manual_seed(1)
    plan = MicroPlan([torch.arange(len(batch))])
    # Slightly off the current policy, so ratios differ from 1 yet few tokens are clipped.
    old = forward_all(policy_forward, policy, batch, plan, temperature=TEMPERATURE)
    batch["old_logprobs"] = (old + 0.05 * torch.randn(old.shape, generator=gen)) * mask
    batch["advantages"] = torch.randn(mask.shape, generator=gen) * mask
    batch["values"] = 0.1 * torch.randn(mask.shape, generator=gen) * mask
    batch["returns"] = torch.randn(mask.shape, generator=gen) * mask
    return batch


def grads(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def one_step_grads(
    batch: RolloutBatch,
    policy: nn.Module,
    critic: nn.Module,
    algo: AlgoConfig,
    max_rows: int,
    padding_free: bool = False,
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """The gradients of one optimizer step over the whole batch (one mini-batch, one epoch),
    cut into micro-batches of at most `max_rows` rows. The grads stay on the parameters after
    the step; grad_clip is huge, so they are what the micro-batches accumulated."""
    policy, critic = copy.deepcopy(policy), copy.deepcopy(critic)
    opt = Optimization(
        dataclasses.replace(algo, ppo_epochs=1),
        MicroBatching(max_rows=max_rows, padding_free=padding_free),
        1,
        TEMPERATURE,
        10,  # total steps: the LR schedule's length
        policy,
        NO_CLIP,
        critic,
        NO_CLIP,
    )
    opt.run(batch, seed=0)
    return grads(policy), grads(critic)


def assert_same_grads(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> None:
    assert got.keys() == want.keys() and want
    for name, g in want.items():
        torch.testing.assert_close(got[name], g, rtol=1e-4, atol=1e-6, msg=name)


# ---------------------------------------------------------------- loss shares


def test_loss_shares_golden_for_token_and_seq_mean():
    # Response lengths 3, 1, 2, 0 in micro-batches [row 0] and [rows 1, 2, 3]:
    # tokens 3 and 3 of 6; non-empty rows 1 and 2 of 3 (the empty row counts for nothing).
    batch = collate(samples([3, 1, 2, 0]), [0.0] * 4, pad_id=0)
    plan = [torch.tensor([0]), torch.tensor([1, 2, 3])]
    assert loss_shares(batch, plan, "token-mean") == [0.5, 0.5]
    assert loss_shares(batch, plan, "seq-mean") == pytest.approx([1 / 3, 2 / 3])


@pytest.mark.parametrize("loss_agg", ["token-mean", "seq-mean"])
def test_loss_shares_sum_to_one(loss_agg):
    batch = collate(samples([5, 1, 4, 0, 2, 7, 3]), [0.0] * 7, pad_id=0)
    plan = [torch.tensor([3, 0]), torch.tensor([1]), torch.tensor([2, 4, 5, 6])]
    assert math.isclose(sum(loss_shares(batch, plan, loss_agg)), 1.0)


@pytest.mark.parametrize("loss_agg", ["token-mean", "seq-mean"])
def test_micro_batch_gradients_sum_to_the_mini_batch_gradient(loss_agg, monkeypatch):
    """Unequal response lengths, so a plain mean of micro-batch losses would be another loss
    (checked last: the test can tell the two apart). Packed micro-batches accumulate the
    same gradients as padded ones."""
    policy, critic = models()
    algo = AlgoConfig(loss_agg=loss_agg, entropy_coef=0.01)
    batch = training_batch(policy, [6, 1, 3, 0, 5, 2, 4, 1])
    whole = one_step_grads(batch, policy, critic, algo, max_rows=len(batch))
    micro = one_step_grads(batch, policy, critic, algo, max_rows=3)  # 3 micro-batches
    for got, want in zip(micro, whole, strict=True):
        assert_same_grads(got, want)
    packed = one_step_grads(batch, policy, critic, algo, max_rows=3, padding_free=True)
    for got, want in zip(packed, whole, strict=True):
        assert_same_grads(got, want)

    # The one-micro-batch step is the plain mini-batch loss: check it against a direct one.
    from hpc_ppo.algo.losses import aggregate, policy_loss

    direct = copy.deepcopy(policy)
    logprobs, entropy = policy_forward(direct, batch, TEMPERATURE, with_entropy=True)
    mask = batch["response_mask"]
    pg, _ = policy_loss(
        logprobs, batch["old_logprobs"], batch["advantages"], mask, algo.clip_ratio, agg=loss_agg
    )
    (pg - algo.entropy_coef * aggregate(entropy, mask, loss_agg)).backward()
    assert_same_grads(whole[0], grads(direct))

    # Equal shares (1/k) instead: the gradient is no longer the mini-batch's.
    monkeypatch.setattr(update, "loss_shares", lambda mini, plan, agg: [1 / len(plan)] * len(plan))
    equal = one_step_grads(batch, policy, critic, algo, max_rows=3)
    name = "lm_head.weight"
    assert not torch.allclose(equal[0][name], whole[0][name], rtol=1e-3, atol=1e-6)


# ---------------------------------------------------------------- non-finite gradients


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_gradient_skips_the_step_and_clears_the_grads(bad):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 2))
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    model(torch.randn(5, 4)).square().sum().backward()
    model[1].bias.grad[0] = bad  # one poisoned entry
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    norm = clip_and_step(model, opt, max_norm=1.0)
    assert not math.isfinite(norm)
    for n, p in model.named_parameters():
        assert torch.equal(p, before[n]), n
        assert p.grad is None, n
    assert opt.state == {}  # AdamW never stepped: no moments, no step count


def test_finite_gradient_is_clipped_and_stepped():
    torch.manual_seed(0)
    model = nn.Linear(4, 3)
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    model(torch.randn(5, 4)).square().sum().backward()
    want = math.sqrt(sum(float(p.grad.square().sum()) for p in model.parameters()))
    before = model.weight.detach().clone()
    assert clip_and_step(model, opt, max_norm=1e-3) == pytest.approx(want, rel=1e-5)
    # SGD with lr 1 moves the weights by the clipped gradient: norm 1e-3 over all parameters.
    moved = math.sqrt(float((model.weight.detach() - before).square().sum()))
    assert 0 < moved <= 1e-3 * (1 + 1e-5)


# ---------------------------------------------------------------- Optimization.run


def test_run_steps_every_mini_batch_and_the_schedule_once():
    policy, critic = models()
    warmup = OptimConfig(lr=1e-3, warmup_steps=4)
    algo = AlgoConfig(ppo_epochs=2)
    opt = Optimization(
        algo, MicroBatching(max_rows=2), 2, TEMPERATURE, 10, policy, warmup, critic, warmup
    )
    assert [s.name for s in opt.states] == ["policy", "critic"]
    assert opt.states[0].model is policy and opt.states[1].model is critic
    lr = opt.actor.scheduler.get_last_lr
    assert lr()[0] == pytest.approx(1e-3 / 4)  # warmup step 1 of 4
    before = policy.lm_head.weight.detach().clone()

    stats = opt.run(training_batch(policy, [3, 1, 4, 1, 5, 2, 6, 2]), seed=0)

    for state in opt.states:
        assert state.scheduler.last_epoch == 1  # once per run, not per optimizer step
        steps = {int(s["step"]) for s in state.optimizer.state.values()}
        assert steps == {4}, state.name  # 2 epochs x 2 mini-batches
    assert stats["actor/lr"] == pytest.approx(1e-3 / 4)  # the LR these updates used
    assert lr()[0] == pytest.approx(1e-3 * 2 / 4)  # the next step's
    assert not torch.equal(policy.lm_head.weight, before)
    for key in ("actor/pg_loss", "actor/grad_norm", "critic/vf_loss", "critic/grad_norm"):
        assert math.isfinite(stats[key]), (key, stats)
    assert stats["actor/grad_norm"] > 0 and stats["critic/grad_norm"] > 0


def test_grpo_has_no_critic_and_a_critic_needs_its_optimizer_config():
    policy, critic = models()
    opt = Optimization(AlgoConfig(name="grpo"), MicroBatching(4), 1, 1.0, 10, policy, NO_CLIP)
    assert [s.name for s in opt.states] == ["policy"]
    stats = opt.run(training_batch(policy, [2, 3, 1, 4]), seed=0)
    assert not [k for k in stats if k.startswith("critic/")]
    with pytest.raises(ValueError, match=r"a critic needs its OptimConfig \(cfg.critic\)"):
        Optimization(AlgoConfig(), MicroBatching(4), 1, 1.0, 10, policy, NO_CLIP, critic)


def test_deferred_gradient_reduce_gives_the_same_fsdp_gradients(monkeypatch):
    """trainer.defer_grad_reduce: FSDP2 reduce-scatters once, after the last micro-batch; the
    gradients are those of a reduce after every micro-batch."""
    from helpers import gloo_rank

    from hpc_ppo.model import shard

    policy, critic = models()
    algo = AlgoConfig(loss_agg="token-mean", entropy_coef=0.01)
    batch = training_batch(policy, [6, 1, 3, 0, 5, 2, 4, 1])
    got = {}
    with gloo_rank():
        for defer in (False, True):
            p, c = (shard(copy.deepcopy(m), torch.device("cpu"), False) for m in (policy, critic))
            calls = []
            for m in (p, c):
                real = m.set_requires_gradient_sync
                monkeypatch.setattr(
                    m,
                    "set_requires_gradient_sync",
                    lambda on, r=real, seen=calls: (seen.append(on), r(on)),
                )
            opt = Optimization(
                dataclasses.replace(algo, ppo_epochs=1),
                MicroBatching(max_rows=3),
                1,
                TEMPERATURE,
                10,
                p,
                NO_CLIP,
                c,
                NO_CLIP,
                defer_grad_reduce=defer,
            )
            opt.run(batch, seed=0)
            assert calls == ([False, False, True] * 2 if defer else [])
            got[defer] = {
                f"{tag}.{n}": q.grad.full_tensor().clone()
                for tag, m in (("policy", p), ("critic", c))
                for n, q in m.named_parameters()
            }
    assert_same_grads(got[True], got[False])
