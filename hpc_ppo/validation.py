"""The validation stage: held-out prompts through the training rollout, scored and logged.

    hpc-ppo run configs/tiny-verl.yaml      # validates at steps 0, 5, 10 (trainer.val_every=5)

Validation "of step k" scores the policy after k training steps and is logged at step k: it
runs before step k trains, at k = 0 with `trainer.val_before_train`, every `trainer.val_every`
steps, and after the last step. Generation is rollout/cycle.py's `rollout` (the same engine,
weight push and stop checks between `rollout.chunks` as training) with the validation
sampling: `rollout.val_n` samples per prompt at `rollout.val_temperature` (0 = greedy).

Sharding: every rank takes ceil(P / world) consecutive prompts; the last ranks are padded
with repeats of prompt 0, generated but not counted, so every rank runs the same chunks and
the same collectives.

Exactly once: whether step k's validation was logged is read from the run's metrics record
(metrics.jsonl, rank 0's tracker), not from the checkpoint. A validation logged just before a
stop or a kill is not run again; one a stop request cut short logged nothing and runs again
when the run resumes. Its sample file `val/step_<k>.jsonl` (every response of the first
`trainer.val_sample_prompts` prompts: prompt, response, answer, reward, source) is written
before the metrics and sent to MLflow under the artifact folder `val/` (tracking.py sends a
path once, and after a restart what an earlier job did not get to send).

Metrics: `val/reward_mean`, `val/<source>/reward_mean` per data source, with
`rollout.val_n` > 1 `val/pass_at_<k>` and `val/<source>/pass_at_<k>` (pass@k; MLflow names
cannot hold "@") for k = 1, 2, 4, ... and val_n (the unbiased estimator of
Chen et al. 2021; a sample passes when its reward >= `reward.pass_threshold`), and
`time/validate`. Golden numbers: tests/test_validation.py.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist

from hpc_ppo import dist as hdist
from hpc_ppo.atomic import atomic_write_text
from hpc_ppo.data import Prompt
from hpc_ppo.metrics import PhaseTimer
from hpc_ppo.reward import Rewards, score_texts
from hpc_ppo.rollout.base import RolloutEngine, SamplingSpec
from hpc_ppo.rollout.cycle import rollout
from hpc_ppo.tracking import MetricsSink

log = logging.getLogger(__name__)
DONE_KEY = "val/reward_mean"  # logged by every validation: its presence marks step k done
ARTIFACT_DIR = "val"


@dataclass(frozen=True)
class Schedule:
    """Which steps validate (trainer.val_every, trainer.val_before_train)."""

    every: int
    before_train: bool
    total_steps: int

    def due(self, step: int) -> bool:
        if step == 0:
            return self.before_train
        return self.every > 0 and (step % self.every == 0 or step == self.total_steps)


def shard_indices(num: int, rank: int, world: int) -> list[int]:
    """This rank's prompt indices: ceil(num / world) of them, -1 where the shard is padding."""
    per = -(-num // world)
    return [i if i < num else -1 for i in range(rank * per, (rank + 1) * per)]


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples of which c passed: 1 - C(n-c, k) / C(n, k)."""
    if n - c < k:
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def pass_ks(n: int) -> list[int]:
    """The k of pass@k logged for n samples: powers of two below n, and n."""
    return [k for k in (2**i for i in range(n.bit_length())) if k < n] + [n]


def validation_metrics(
    rewards: list[list[float]], sources: list[str], threshold: float
) -> dict[str, float]:
    """`rewards[i]`: the samples' rewards of prompt i, `sources[i]` its data source."""
    out = _scores("val/", rewards, threshold)
    for source in sorted(set(sources)):
        mine = [rs for rs, s in zip(rewards, sources, strict=True) if s == source]
        out.update(_scores(f"val/{source}/", mine, threshold))
    return out


def _scores(prefix: str, rewards: list[list[float]], threshold: float) -> dict[str, float]:
    """reward_mean, and pass_at_<k> for more than one sample a prompt, of these prompts."""
    flat = [r for rs in rewards for r in rs]
    out = {f"{prefix}reward_mean": sum(flat) / len(flat)}
    n = len(rewards[0])
    if n > 1:
        passed = [sum(r >= threshold for r in rs) for rs in rewards]
        for k in pass_ks(n):
            out[f"{prefix}pass_at_{k}"] = sum(pass_at_k(n, c, k) for c in passed) / len(passed)
    return out


def _seed(seed: int, step: int, rank: int) -> int:
    digest = hashlib.blake2b(f"val:{seed}:{step}:{rank}".encode(), digest_size=4).digest()
    return int.from_bytes(digest, "big") >> 1


class Validation:
    """The validation of a run on one rank; `run(step, ...)` does step's, if due."""

    def __init__(
        self,
        schedule: Schedule,
        prompts: list[Prompt],
        encode: Callable[[Prompt], list[int]],
        decode: Callable[[list[list[int]]], list[str]],
        rewards: Rewards,
        sampling: SamplingSpec,  # its seed is the run's (trainer.seed)
        chunks: int,
        pass_threshold: float,
        sample_prompts: int,
        run_dir: Path,
        rank: int,
        world: int,
    ) -> None:
        self.schedule, self.prompts, self.decode, self.rewards = schedule, prompts, decode, rewards
        self.sampling, self.chunks, self.threshold = sampling, chunks, pass_threshold
        self.sample_prompts, self.run_dir, self.rank, self.world = (
            sample_prompts,
            run_dir,
            rank,
            world,
        )
        self.mine = shard_indices(len(prompts), rank, world) if prompts else []
        self.encoded = [encode(prompts[max(i, 0)]) for i in self.mine]

    def run(
        self,
        step: int,
        engine: RolloutEngine,
        weights: Callable[[], Iterable[tuple[str, torch.Tensor]]],
        should_stop: Callable[[], bool],
        tracker: MetricsSink,
    ) -> bool:
        """Step `step`'s validation if it is due and not logged yet; False if a stop request
        came first or cut it short (nothing logged). A collective: every rank calls it."""
        if not self.prompts or not self.schedule.due(step):
            return True
        if hdist.all_reduce([float(tracker.logged(DONE_KEY, step))], "max")[0]:
            return True  # logged by an earlier job of this run
        if should_stop():
            return False
        if self.rank == 0:
            n = self.sampling.n
            log.info("validation of step %d: %d prompts x %d", step, len(self.prompts), n)
        timer = PhaseTimer()
        spec = SamplingSpec(
            self.sampling.n,
            self.sampling.temperature,
            self.sampling.top_p,
            self.sampling.max_new_tokens,
            _seed(self.sampling.seed, step, self.rank),
        )
        samples = rollout(engine, weights(), self.encoded, spec, self.chunks, should_stop, timer)
        if samples is None:
            if self.rank == 0:
                log.warning(
                    "validation of step %d cut short by a stop request; it runs again"
                    " when the run resumes",
                    step,
                )
            return False
        owners = [self.prompts[max(self.mine[s.prompt_index], 0)] for s in samples]
        responses = self.decode([s.response_ids for s in samples])
        real = [i for i, s in enumerate(samples) if self.mine[s.prompt_index] >= 0]
        scores = [0.0] * len(samples)
        part = hdist.agree_on_failure(  # a user function: every rank stops together
            lambda: score_texts(
                self.rewards, [owners[i] for i in real], [responses[i] for i in real]
            )
        )
        for i, value in zip(real, part, strict=True):
            scores[i] = value
        rewards = self._gather(samples, scores)
        sources = [p.source for p in self.prompts]
        metrics = validation_metrics(rewards, sources, self.threshold)
        records = self._sample_records(step, samples, owners, responses, scores)
        if self.rank == 0:
            path = self.run_dir / ARTIFACT_DIR / f"step_{step}.jsonl"
            path.parent.mkdir(exist_ok=True)
            atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in records))
            tracker.log_artifact(path, ARTIFACT_DIR)
        metrics["time/validate"] = hdist.all_reduce([timer.total()["step"]], "max")[0]
        tracker.log_metrics(step, metrics)
        return True

    def _gather(self, samples: list, scores: list[float]) -> list[list[float]]:
        """Every prompt's rewards, from every rank's shard (padding dropped)."""
        index = torch.tensor(
            [float(self.mine[s.prompt_index]) for s in samples], dtype=torch.float64
        )
        values = torch.tensor(scores, dtype=torch.float64)
        index, values = hdist.all_gather_1d(index), hdist.all_gather_1d(values)
        out: list[list[float]] = [[] for _ in self.prompts]
        for i, v in zip(index.tolist(), values.tolist(), strict=True):
            if i >= 0:
                out[int(i)].append(v)
        return out

    def _sample_records(
        self,
        step: int,
        samples: list,
        owners: list[Prompt],
        responses: list[str],
        scores: list[float],
    ) -> list[dict]:
        """The sample file's rows (every response of the first trainer.val_sample_prompts
        prompts), gathered from the ranks that hold them, in prompt order."""
        mine = [
            {
                "step": step,
                "index": self.mine[s.prompt_index],
                "source": p.source,
                "prompt": p.text,
                "response": r,
                "answer": p.answer,
                "reward": v,
            }
            for s, p, r, v in zip(samples, owners, responses, scores, strict=True)
            if 0 <= self.mine[s.prompt_index] < self.sample_prompts
        ]
        if dist.is_initialized() and self.world > 1:
            # Objects through the default group: gloo on CPU, and the CPU side of a
            # "cpu:gloo,cuda:nccl" group on GPUs (torch picks CPU for object collectives).
            every: list = [None] * self.world
            dist.all_gather_object(every, mine)
            mine = [r for part in every for r in part]
        return sorted(mine, key=lambda r: r["index"])  # stable: samples keep their order
