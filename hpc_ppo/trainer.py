"""The rank loop: rollout -> score -> old/ref logprobs and values -> advantages -> PPO update.

Every rank runs this same code, whether started by `hpc-ppo run` (local processes) or by srun.
Each rank generates for its own slice of the step's prompts; all samples of one prompt stay on
one rank, so GRPO groups never straddle ranks.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from hpc_ppo import checkpoint as ckpt
from hpc_ppo import dist as hdist
from hpc_ppo import microbatch
from hpc_ppo.algo.advantages import masked_mean
from hpc_ppo.balance import balance_groups
from hpc_ppo.batch import collate, critic_forward, policy_forward
from hpc_ppo.checkpoint import Checkpointable
from hpc_ppo.config import RESUMABLE_KEYS, Config, to_dict
from hpc_ppo.data import Prompt, PromptSampler, load_prompts, make_letters_prompts, shard_for_rank
from hpc_ppo.model import build_tokenizer, full_state_iter, load_critic, load_policy, shard
from hpc_ppo.preempt import StopFlag
from hpc_ppo.provenance import check_code_version
from hpc_ppo.reward import resolve_reward_fn, score_batch
from hpc_ppo.rollout.base import RolloutEngine, SamplingSpec
from hpc_ppo.tracking import MetricsSink, NullTracker, Tracker, flatten, read_run_id
from hpc_ppo.update import PPOUpdate, compute_advantages

log = logging.getLogger(__name__)


class Phase:
    """Wall-clock seconds per named phase of a step."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        yield
        self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start


class Trainer:
    def __init__(
        self,
        cfg: Config,
        run_dir: Path,
        rank: int,
        world_size: int,
        device: torch.device,
        stop: StopFlag | None = None,
    ):
        self.cfg, self.run_dir, self.rank, self.world, self.device = (
            cfg,
            run_dir,
            rank,
            world_size,
            device,
        )
        t = cfg.trainer
        self.tokenizer = build_tokenizer(cfg)
        self.prompts = _load_prompts(cfg)
        self.sampler = PromptSampler(
            len(self.prompts), t.batch_size, t.seed, shuffle=cfg.data.shuffle
        )
        self.reward_fn = resolve_reward_fn(cfg.reward.fn)
        self.engine = self._make_engine()
        # Seed after the engine: vLLM re-seeds the process when it starts (DESIGN.md).
        random.seed(t.seed + rank)
        np.random.seed(t.seed + rank)
        torch.manual_seed(t.seed + rank)
        bf16 = device.type == "cuda" and cfg.model.dtype == "float32"
        self.policy = shard(load_policy(cfg, self.tokenizer, t.seed), device, bf16)
        self.ref = None
        if cfg.algo.kl_coef > 0:
            self.ref = shard(load_policy(cfg, self.tokenizer, t.seed), device, bf16).eval()
            self.ref.requires_grad_(False)
        self.critic = (
            shard(load_critic(cfg, self.tokenizer, t.seed), device, bf16)
            if cfg.algo.name == "ppo"
            else None
        )
        if cfg.model.gradient_checkpointing:
            for m in (self.policy, self.critic):
                if m is not None:
                    m.gradient_checkpointing_enable()
        self.actor_opt, self.actor_sched = _optimizer(self.policy, cfg.actor)
        self.critic_opt, self.critic_sched = (
            _optimizer(self.critic, cfg.critic) if self.critic else (None, None)
        )
        self.updater = PPOUpdate(cfg, self.policy, self.actor_opt, self.critic, self.critic_opt)
        self.parts = [Checkpointable("policy", self.policy, self.actor_opt, self.actor_sched)]
        if self.critic is not None:
            self.parts.append(
                Checkpointable("critic", self.critic, self.critic_opt, self.critic_sched)
            )
        self.stop = stop or StopFlag()
        self._relog: tuple[int, dict[str, float]] | None = None
        self._pending: ckpt.PendingSave | None = None
        # Async saves run their collectives on a group of their own (never interleaved).
        self._save_group = dist.new_group(backend="gloo") if t.async_save else None
        self.start_step = self._resume()
        self.tracker: MetricsSink = NullTracker()
        if rank == 0:
            self.tracker = Tracker(
                run_dir,
                cfg.tracking.uri,
                cfg.tracking.experiment,
                run_dir.name,
                run_id=read_run_id(run_dir),
            )
            params, tags = _params_and_tags(run_dir, cfg)
            self.tracker.log_params(params)
            self.tracker.set_tags(tags)
            if self._relog is not None:
                self.tracker.log_metrics(*self._relog)

    def _resume(self) -> int:
        """Continue from the newest complete checkpoint, if the run folder has one."""
        # One listing: resolve_step would list (and warn about skipped folders) again.
        steps = ckpt.complete_steps(self.run_dir, warn=self.rank == 0)
        if not steps:
            return 0
        path = ckpt.checkpoint_root(self.run_dir) / f"step_{steps[-1]}"
        state = ckpt.load(path, self.parts)
        self.sampler.load_state_dict(state["sampler"])
        if state.get("last_metrics"):
            self._relog = (int(state["step"]) - 1, state["last_metrics"])
        log.info(
            "resumed from %s: %d of %d steps done",
            path,
            state["step"],
            self.cfg.trainer.total_steps,
        )
        return int(state["step"])

    def save(self, done: int, metrics: dict[str, float] | None, final: bool = True) -> float:
        """Checkpoint after `done` completed steps; returns the seconds it blocked training.

        With `trainer.async_save`, a non-final save returns once the state is copied to CPU
        memory; its commit happens before the next save or at the end.

        The last step's metrics ride along, so a kill between the commit and the MLflow
        write cannot lose them: the resumed job logs them again (the tracker skips repeats).
        """
        state = {
            "last_metrics": metrics,
            "sampler": self.sampler.state_dict(),
            "mlflow_run_id": read_run_id(self.run_dir),
            "config": to_dict(self.cfg),
        }
        keep = self.cfg.trainer.keep_checkpoints
        self.finish_pending_save()
        if self.cfg.trainer.async_save and not final:
            blocked, self._pending = ckpt.save_async(
                self.run_dir, done, self.parts, state, keep, self._save_group
            )
            return blocked
        return ckpt.save(self.run_dir, done, self.parts, state, keep)

    def finish_pending_save(self) -> None:
        if self._pending is not None:
            ckpt.finish(self._pending)
            self._pending = None

    def _make_engine(self) -> RolloutEngine:
        if self.cfg.rollout.engine == "vllm":
            from hpc_ppo.rollout.vllm_engine import VLLMEngine  # only GPU installs have vllm

            return VLLMEngine(self.cfg, self.tokenizer, self.device, self.run_dir)
        from hpc_ppo.rollout.hf_engine import HFEngine

        model = load_policy(self.cfg, self.tokenizer, self.cfg.trainer.seed)
        return HFEngine(
            model, self.tokenizer.eos_token_id, self.tokenizer.pad_token_id, self.device
        )

    # ------------------------------------------------------------------ loop

    def fit(self) -> bool:
        """Train to `trainer.total_steps`; returns False when a stop request ended it early."""
        t = self.cfg.trainer
        bar = _progress(self.rank, self.start_step, t.total_steps)
        done = saved = self.start_step
        try:
            while done < t.total_steps and not self.stop.agreed():
                metrics = self.train_step(done)
                if metrics is None:  # stop requested mid-rollout: the step was abandoned
                    break
                done += 1
                if done == t.total_steps or (t.save_every and done % t.save_every == 0):
                    metrics["time/save"] = self.save(done, metrics, final=done == t.total_steps)
                    saved = done
                self.tracker.log_metrics(done - 1, metrics)
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(
                        reward=f"{metrics['reward/mean']:.3f}",
                        len=f"{metrics['response/length_mean']:.1f}",
                        s=f"{metrics['time/step']:.2f}",
                    )
            finished = done >= t.total_steps
            self.finish_pending_save()
            if not finished:
                if saved != done:
                    what = f"checkpoint step_{done} saved in {self.save(done, None):.2f} s"
                else:
                    what = (
                        f"checkpoint step_{done} already saved"
                        if done
                        else "no step done, nothing saved"
                    )
                if self.rank == 0:  # the signal time is rank 0's; every rank agreed to stop
                    log.warning(
                        "stop requested by %s: %s; exiting %.2f s after the signal",
                        self.stop.signal_name or "another rank's signal",
                        what,
                        self.stop.seconds_since_signal() or 0.0,
                    )
            self.tracker.close("FINISHED" if finished else "KILLED")
            return finished
        except BaseException:
            self.tracker.close("FAILED", timeout_s=10)
            raise
        finally:
            if bar is not None:
                bar.close()
            self.engine.close()

    def train_step(self, step: int) -> dict[str, float] | None:
        """One PPO step; None if a stop request arrived before the update (nothing changed)."""
        cfg, phase = self.cfg, Phase()
        step_start = time.perf_counter()
        sampler_state = self.sampler.state_dict()
        indices = shard_for_rank(self.sampler.next_indices(), self.rank, self.world)
        prompts = [self.prompts[i] for i in indices]
        with phase("push"):
            self.engine.wake_weights()
            dtype = torch.bfloat16 if self.device.type == "cuda" else None
            self.engine.push_weights(full_state_iter(self.policy, dtype))
            self.engine.wake_cache()
        samples = []
        for c, (lo, hi) in enumerate(_chunk_bounds(len(prompts), cfg.rollout.chunks)):
            if c > 0 and self.stop.agreed():
                break
            with phase("generate"):
                sampling = SamplingSpec(
                    cfg.rollout.n,
                    cfg.rollout.temperature,
                    cfg.rollout.top_p,
                    cfg.rollout.max_new_tokens,
                    seed=_step_seed(cfg.trainer.seed, step, self.rank) + 7919 * c,
                )
                chunk = self.engine.generate([self._encode(p) for p in prompts[lo:hi]], sampling)
            for s_ in chunk:
                s_.prompt_index += lo
            samples.extend(chunk)
        with phase("sleep"):
            self.engine.sleep()
        if len(samples) < len(prompts) * cfg.rollout.n or self.stop.agreed():
            # Abandon the step: the update has not started, so the weights are untouched and
            # putting the sampler back makes the resumed run redo exactly this step.
            self.sampler.load_state_dict(sampler_state)
            return None
        with phase("reward"):
            responses = self.tokenizer.batch_decode(
                [s.response_ids for s in samples], skip_special_tokens=True
            )
            owners = [prompts[s.prompt_index] for s in samples]
            scores = score_batch(
                self.reward_fn, [p.text for p in owners], responses, [p.answer for p in owners]
            )
        if cfg.trainer.balance_tokens and self.world > 1:
            samples, scores = balance_groups(samples, scores, cfg.rollout.n, self.rank, self.world)
        batch = collate(samples, scores, self.tokenizer.pad_token_id).to(self.device)
        mask, temp = batch["response_mask"], cfg.rollout.temperature
        parts = microbatch.plan(
            batch, cfg.trainer.micro_batch_size, cfg.trainer.max_tokens_per_micro_batch
        )
        with phase("old_logprob"):
            batch["old_logprobs"] = microbatch.forward_all(
                policy_forward, self.policy, batch, parts, temperature=temp
            )
        if self.ref is not None:
            with phase("ref"):
                batch["ref_logprobs"] = microbatch.forward_all(
                    policy_forward, self.ref, batch, parts, temperature=temp
                )
        if self.critic is not None:
            with phase("values"):
                batch["values"] = microbatch.forward_all(critic_forward, self.critic, batch, parts)
        with phase("advantages"):
            kl_metric = compute_advantages(cfg, batch)
        with phase("update"):
            stats = self.updater.run(batch, _step_seed(cfg.trainer.seed, step, self.rank) + 1)
            self.actor_sched.step()
            if self.critic_sched is not None:
                self.critic_sched.step()
        local = {
            "reward/local_mean": float(batch["scores"].mean()),
            "actor/kl_ref": kl_metric,
            "actor/logprob_gap": float(
                masked_mean((batch["engine_logprobs"] - batch["old_logprobs"]).abs(), mask)
            ),
            "response/length_mean": float(mask.sum(-1).mean()),
            "response/finished_frac": sum(s.finished for s in samples) / len(samples),
            **stats,
        }
        means = dict(zip(local, hdist.all_reduce(list(local.values()), "mean"), strict=False))
        seconds = {**phase.seconds, "step": time.perf_counter() - step_start}
        slowest = dict(zip(seconds, hdist.all_reduce(list(seconds.values()), "max"), strict=False))
        all_scores = hdist.all_gather_1d(batch["scores"].cpu())
        tokens = hdist.all_reduce([float(mask.sum()), float(batch["attention_mask"].sum())], "sum")
        metrics = {k: v for k, v in means.items() if k != "reward/local_mean"}
        metrics["reward/mean"] = float(all_scores.mean())
        metrics["reward/std"] = float(all_scores.std()) if all_scores.numel() > 1 else 0.0
        metrics.update({f"time/{k}": v for k, v in slowest.items()})
        metrics["perf/gen_tokens_per_s"] = tokens[0] / max(slowest["generate"], 1e-9)
        metrics["perf/tokens_per_s"] = tokens[1] / max(slowest["step"], 1e-9)
        metrics["perf/tokens"] = tokens[1]
        metrics["actor/lr"] = self.actor_sched.get_last_lr()[0]
        return metrics

    def _encode(self, prompt: Prompt) -> list[int]:
        if self.cfg.data.chat_template:
            ids = self.tokenizer.apply_chat_template(
                [{"role": "user", "content": prompt.text}],
                add_generation_prompt=True,
                tokenize=True,
            )
        else:
            ids = self.tokenizer(prompt.text, add_special_tokens=False)["input_ids"]
        return list(ids)[-self.cfg.data.max_prompt_tokens :]


def _chunk_bounds(n: int, chunks: int) -> list[tuple[int, int]]:
    """Split n items into `chunks` contiguous, near-equal ranges (same count on every rank)."""
    edges = [round(i * n / chunks) for i in range(chunks + 1)]
    return [(edges[i], edges[i + 1]) for i in range(chunks) if edges[i + 1] > edges[i]]


def _params_and_tags(run_dir: Path, cfg: Config) -> tuple[dict[str, str], dict[str, str]]:
    """MLflow params = the resolved config. Launch keys changed on resume (RESUMABLE_KEYS) keep
    their first value as the param (params are immutable) and carry the new one as a tag."""
    params = flatten(to_dict(cfg))
    first_path = run_dir / "params.json"
    first = json.loads(first_path.read_text()) if first_path.is_file() else {}
    tags = {
        "launcher": "slurm" if "SLURM_JOB_ID" in os.environ else "local",
        "code.version": check_code_version(run_dir),
    }
    for key in RESUMABLE_KEYS:
        # Every resumed job tags all of them, changed or not: MLflow keeps tags, so a tag only
        # set on change went stale when a later resume went back to the first value
        # (2 -> 1 -> 2 ranks left resumed.trainer.nprocs=1).
        if key in first:
            tags[f"resumed.{key}"], params[key] = params[key], first[key]
    if "SLURM_JOB_ID" in os.environ:
        tags["slurm.job_id"] = os.environ["SLURM_JOB_ID"]
        tags["slurm.restart_count"] = os.environ.get("SLURM_RESTART_COUNT", "0")
    return params, tags


def _load_prompts(cfg: Config) -> list[Prompt]:
    if cfg.data.path is not None:
        return load_prompts(cfg.data.path, cfg.data.prompt_key, cfg.data.answer_key)
    s = cfg.data.synthetic
    return make_letters_prompts(
        s.num_prompts, cfg.trainer.seed, min_len=s.min_len, max_len=s.max_len
    )


def _optimizer(
    model: nn.Module, oc
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=oc.lr, betas=oc.betas, weight_decay=oc.weight_decay)
    warm = oc.warmup_steps
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warm) if warm else 1.0
    )
    return opt, sched


def _step_seed(seed: int, step: int, rank: int) -> int:
    return (seed * 1_000_003 + step * 1009 + rank) % (2**31 - 1)


def _progress(rank: int, start: int, total: int):
    if rank != 0:
        return None
    from tqdm import tqdm

    return tqdm(
        total=total, initial=start, desc="ppo", unit="step", dynamic_ncols=True, mininterval=1.0
    )
