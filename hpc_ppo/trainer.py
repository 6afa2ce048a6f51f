"""The rank loop: rollout -> score -> old/ref log-probs and values -> advantages -> update.

    hpc-ppo run configs/tiny-cpu.yaml trainer.nprocs=2     # two local ranks run this loop

Every rank runs this same code, whether started by `hpc-ppo run` (local processes) or by srun.
Each stage is a function in a file named after it: rollout/cycle.py, reward.py, batch.py,
logprobs.py, advantages.py, update.py, metrics.py, checkpoint.py, preempt.py. Each rank
generates for its own slice of the step's prompts; all samples of one prompt stay on one
rank, so GRPO groups never straddle ranks. The Trainer is the one place that holds the whole
config tree; every stage gets its section.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from hpc_ppo import console
from hpc_ppo.advantages import compute_advantages
from hpc_ppo.batch import (
    MicroBatching,
    balance_groups,
    collate,
    computed_tokens,
    plan_micro_batches,
)
from hpc_ppo.checkpoint import Checkpointer, complete_steps, rng_state, set_rng_state
from hpc_ppo.config import Config, to_dict
from hpc_ppo.data import Prompt, encode_prompt, load_prompts, task_prompts
from hpc_ppo.dist import agree_on_failure
from hpc_ppo.logprobs import old_ref_logprobs_and_values
from hpc_ppo.metrics import PhaseTimer, gpu_memory, step_metrics
from hpc_ppo.model import Models, build_models, build_tokenizer, full_state_iter, padding_free
from hpc_ppo.preempt import StopFlag, save_on_stop
from hpc_ppo.profiling import profiled
from hpc_ppo.reward import resolve_rewards, score_samples
from hpc_ppo.rollout.base import SamplingSpec
from hpc_ppo.rollout.cycle import rollout
from hpc_ppo.rollout.make import make_engine
from hpc_ppo.rollout.preload import EngineImport
from hpc_ppo.run_tracking import mlflow_ui_hint, record_run, start_tracking
from hpc_ppo.runlog import LOG_FILE
from hpc_ppo.sampler import PromptSampler, shard_for_rank
from hpc_ppo.switch_interval import short_switch_interval
from hpc_ppo.tracking import MetricsSink, NullTracker, read_run_id
from hpc_ppo.update import Optimization
from hpc_ppo.validation import Schedule, Validation

log = logging.getLogger(__name__)


# Start-up phases, in order: rank.py's, then the trainer's (`trainer_other`: the rest of it).
STARTUP_PHASES = (
    "interpreter_and_imports",
    "config_and_logging",
    "process_group",
    "trainer_imports",
    "tokenizer_and_data",
    "models",
    "restore",
    "engine",
    "tracking",
    "trainer_other",
)


def make_optimization(
    cfg: Config, models: Models, device: torch.device, total_steps: int
) -> Optimization:
    """The micro-batching, optimizers and update the trainer runs for `cfg` over `models`
    (bench/train.py and bench/restore.py build the same)."""
    t, a = cfg.trainer, cfg.algo
    packed = padding_free(t.padding_free, cfg.model, device)
    return Optimization(
        a,
        MicroBatching(t.micro_batch_size, t.max_tokens_per_micro_batch, packed),
        t.batch_size // a.mini_batch_size,
        cfg.rollout.temperature,
        total_steps,
        models.policy,
        cfg.actor,
        models.critic,
        cfg.critic,
        defer_grad_reduce=t.defer_grad_reduce,
    )


class Trainer:
    def __init__(
        self,
        cfg: Config,
        run_dir: Path,
        rank: int,
        world_size: int,
        device: torch.device,
        stop: StopFlag | None = None,
        startup: dict[str, float] | None = None,
    ):
        """`startup`: seconds of the rank's start-up before the trainer (rank.py); the
        trainer adds its own phases, logs them and sends them with the first step."""
        clock = PhaseTimer()
        self.cfg, self.run_dir, self.rank, self.world, self.device = (
            cfg,
            run_dir,
            rank,
            world_size,
            device,
        )
        self.stop = stop or StopFlag()
        # vLLM's import runs Python beside this thread until the engine is up: a short switch
        # interval keeps it from stalling its copies and reads.
        with short_switch_interval():
            self._start(clock, startup)

    def _start(self, clock: PhaseTimer, startup: dict[str, float] | None) -> None:
        cfg, rank, run_dir, t = self.cfg, self.rank, self.run_dir, self.cfg.trainer
        with clock("tokenizer_and_data"):
            self.tokenizer = build_tokenizer(cfg.model)
            self.prompts = task_prompts(cfg.data, t.seed)
            self.sampler = PromptSampler(len(self.prompts), t.batch_size, t.seed, cfg.data.shuffle)
            self.rewards = resolve_rewards(cfg.reward)
        # The tracker first: its process imports MLflow and opens the store while the models
        # load and the engine starts (the start block waits for the run's page: ~3 s when it
        # started after). The params follow the restore, whose errors (another model's
        # checkpoint) come first.
        self.tracker: MetricsSink = NullTracker()
        if rank == 0:
            with clock("tracking"):
                self.tracker = start_tracking(run_dir, cfg.tracking)
        try:
            self._build(clock, startup)
        except BaseException:
            self.tracker.close("FAILED", timeout_s=10)
            raise

    def _build(self, clock: PhaseTimer, startup: dict[str, float] | None) -> None:
        """The models, the optimizers, the checkpoint to resume from, then the engine: vLLM's
        import runs meanwhile in a thread (rollout/preload.py)."""
        cfg, run_dir, rank, device = self.cfg, self.run_dir, self.rank, self.device
        t, a = cfg.trainer, cfg.algo
        engine_import = EngineImport(cfg.rollout, run_dir)
        random.seed(t.seed + rank)
        np.random.seed(t.seed + rank)
        torch.manual_seed(t.seed + rank)
        # A requeued job restores its trained models from the checkpoint: their weight files
        # are not read first (model.for_restore).
        restoring = bool(complete_steps(run_dir, warn=False))
        with clock("models"):
            self.models = build_models(
                cfg.model,
                self.tokenizer,
                t.seed,
                device,
                a.kl_coef > 0,
                a.name == "ppo",
                restoring=restoring,
            )
        self.optim = make_optimization(cfg, self.models, device, t.total_steps)
        self.micro = self.optim.micro
        self.checkpoints = Checkpointer(
            run_dir, self.optim.states, t.keep_checkpoints, t.async_save, t.async_save_pinned
        )
        with clock("restore"):
            resumed = self.checkpoints.resume(t.total_steps, warn=rank == 0)
        self.start_step = int(resumed["step"]) if resumed else 0
        if resumed:
            self.sampler.load_state_dict(resumed["sampler"])
        if rank == 0:
            with clock("tracking"):
                record_run(self.tracker, run_dir, to_dict(cfg))
        # vLLM re-seeds the process when it starts (DESIGN.md): the streams the loop continues
        # (seeded above, or the checkpoint's) are put back after it. Memory the restore held
        # only for its copies goes back to the device before vLLM measures what is free.
        streams = rng_state()
        if device.type == "cuda":
            torch.cuda.empty_cache()
        with clock("engine"):
            engine_import.wait()
            self.engine = make_engine(cfg, self.tokenizer, device, run_dir)
        set_rng_state(streams)
        if resumed and resumed.get("last_metrics"):
            # The last step's metrics ride in the checkpoint: a kill between the commit and the
            # MLflow write cannot lose them (the tracker skips repeats).
            self.tracker.log_metrics(self.start_step - 1, resumed["last_metrics"])
        self.validation = self._make_validation()
        phases = {**(startup or {}), **clock.seconds}
        phases["trainer_other"] = clock.total()["step"] - sum(clock.seconds.values())
        # The same keys in the same order on every rank: the first step reduces them.
        self.startup: dict[str, float] | None = {k: phases.get(k, 0.0) for k in STARTUP_PHASES}

    # ------------------------------------------------------------------ loop

    def fit(self) -> bool:
        """Train to `trainer.total_steps`; returns False when a stop request ended it early."""
        steps = console.StepLog(self.start_step, self.cfg.trainer.total_steps, self.rank == 0)
        if self.rank == 0:
            self._start_block()
            if self.startup:
                log.info(
                    "start-up %.1f s on rank 0: %s",
                    sum(self.startup.values()),
                    ", ".join(f"{k.replace('_', ' ')} {v:.1f}" for k, v in self.startup.items()),
                )
        try:
            with steps.active():
                finished = self._loop(steps)
            self.tracker.close("FINISHED" if finished else "KILLED")
            return finished
        except BaseException:
            self.tracker.close("FAILED", timeout_s=10)
            raise
        finally:
            self.engine.close()

    def _loop(self, steps: console.StepLog) -> bool:
        t = self.cfg.trainer
        done = saved = self.start_step
        while done < t.total_steps and not self.stop.agreed():
            if not self.validate(done):  # step `done`'s validation, before it trains
                break
            with profiled(done in t.profile_steps, self.run_dir / "profile", done, self.rank):
                metrics = self.train_step(done)
            if metrics is None:  # stop requested mid-rollout: the step was abandoned
                break
            done += 1
            if done == t.total_steps or (t.save_every and done % t.save_every == 0):
                metrics["time/save"] = self.save(done, metrics, final=done == t.total_steps)
                saved = done
            self.tracker.log_metrics(done - 1, metrics)
            steps.step(done, metrics)
            _warn_skipped_updates(self.rank, done - 1, metrics)
        finished = done >= t.total_steps and self.validate(done)  # after the last step
        self.checkpoints.finish_pending()
        if not finished:
            save_on_stop(self.stop, done, saved, lambda: self.save(done, None), self.rank)
        return finished

    def _start_block(self) -> None:
        command, url = mlflow_ui_hint(self.tracker)
        params = console.count_parameters(self.models.policy, self.models.critic)
        console.start_block(
            {
                "world": console.world_line(self.world, self.device.type),
                "model": f"{self.cfg.model.path} ({params})",
                "versions": console.versions(),
                "steps": f"{self.start_step} of {self.cfg.trainer.total_steps} done",
                "run folder": str(self.run_dir),
                "log file": str(self.run_dir / LOG_FILE),
                "mlflow": command,
                "mlflow run": url,
            }
        )

    def train_step(self, step: int) -> dict[str, float] | None:
        """One PPO step; None if a stop request arrived before the update (nothing changed)."""
        cfg, timer = self.cfg, PhaseTimer()
        seed = _step_seed(cfg.trainer.seed, step, self.rank)
        sampler_state = self.sampler.state_dict()
        prompts = self._step_prompts()
        r = cfg.rollout
        samples = rollout(
            self.engine,
            self._weights(),
            [self._encode(p) for p in prompts],
            SamplingSpec(r.n, r.temperature, r.top_p, r.max_new_tokens, seed, r.forced_lengths),
            r.chunks,
            self.stop.agreed,
            timer,
        )
        if samples is None or self.stop.agreed():
            # Abandon the step: the update has not started, so the weights are untouched and
            # putting the sampler back makes the resumed run redo exactly this step.
            self.sampler.load_state_dict(sampler_state)
            return None
        with timer("reward"):  # a user function: every rank stops together if one fails
            scores = agree_on_failure(
                lambda: score_samples(self.rewards, self._decode, prompts, samples)
            )
        if cfg.trainer.balance_tokens and self.world > 1:
            samples, scores = balance_groups(samples, scores, r.n, self.rank, self.world)
        batch = collate(samples, scores, self.tokenizer.pad_token_id).to(self.device)
        plan = plan_micro_batches(batch, self.micro)
        old_ref_logprobs_and_values(self.models, batch, plan, r.temperature, timer)
        with timer("advantages"):
            kl_ref = compute_advantages(cfg.algo, r.n, batch)
        with timer("update"):
            stats = self.optim.run(batch, seed + 1)
        finished = sum(s.finished for s in samples) / len(samples)
        memory = gpu_memory(self.device, self.engine)
        if self.startup:  # this process's first step: its start-up, the slowest rank's
            memory.update({f"startup/{k}": v for k, v in self.startup.items()})
            self.startup = None
        return step_metrics(
            batch, finished, stats, kl_ref, timer, memory, computed_tokens(batch, plan)
        )

    def validate(self, step: int) -> bool:
        """Step `step`'s validation when due and not logged yet (validation.py); False if a
        stop request came first or cut it short."""
        return self.validation.run(step, self.engine, self._weights, self.stop.agreed, self.tracker)

    def save(self, done: int, metrics: dict[str, float] | None, final: bool = True) -> float:
        """Checkpoint after `done` steps; the seconds it blocked training (see Checkpointer).

        The last step's metrics ride along, so a kill between the commit and the MLflow
        write cannot lose them: the resumed job logs them again (the tracker skips repeats).
        """
        state = {
            "last_metrics": metrics,
            "sampler": self.sampler.state_dict(),
            "mlflow_run_id": read_run_id(self.run_dir),
            "config": to_dict(self.cfg),
        }
        return self.checkpoints.save(done, state, final)

    def _step_prompts(self) -> list[Prompt]:
        """This rank's slice of the step's prompts (the sampler advances on every rank)."""
        indices = shard_for_rank(self.sampler.next_indices(), self.rank, self.world)
        return [self.prompts[i] for i in indices]

    def _make_validation(self) -> Validation:
        t, r, d = self.cfg.trainer, self.cfg.rollout, self.cfg.data
        prompts = (
            load_prompts(d.val_path, d.prompt_key, d.answer_key, "data.val_path")
            if d.val_path is not None
            else []
        )
        return Validation(
            Schedule(t.val_every, t.val_before_train, t.total_steps),
            prompts,
            self._encode,
            self._decode,
            self.rewards,
            SamplingSpec(r.val_n, r.val_temperature, r.top_p, r.max_new_tokens, t.seed),
            r.chunks,
            self.cfg.reward.pass_threshold,
            t.val_sample_prompts,
            self.run_dir,
            self.rank,
            self.world,
        )

    def _weights(self) -> Iterator[tuple[str, torch.Tensor]]:
        """The policy's full tensors for the rollout engine (a collective under FSDP)."""
        dtype = torch.bfloat16 if self.device.type == "cuda" else None  # vLLM runs in bf16
        return full_state_iter(self.models.policy, dtype)

    def _encode(self, prompt: Prompt) -> list[int]:
        d = self.cfg.data
        return encode_prompt(self.tokenizer, prompt, d.chat_template, d.max_prompt_tokens)

    def _decode(self, ids: list[list[int]]) -> list[str]:
        return self.tokenizer.batch_decode(ids, skip_special_tokens=True)


def _warn_skipped_updates(rank: int, step: int, metrics: dict[str, float]) -> None:
    for model in ("actor", "critic"):
        frac = metrics.get(f"{model}/skipped_updates", 0.0)
        if rank == 0 and frac > 0:
            log.warning(
                "step %d: %.0f%% of the %s's optimizer steps were skipped: the gradient norm was "
                "not finite (NaN/inf loss or overflow); lower the learning rate or check rewards",
                step,
                100 * frac,
                model,
            )


def _step_seed(seed: int, step: int, rank: int) -> int:
    return (seed * 1_000_003 + step * 1009 + rank) % (2**31 - 1)
