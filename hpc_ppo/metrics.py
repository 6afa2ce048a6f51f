"""A step's metrics: the phase timer and the cross-rank reductions behind every logged number.

    hpc-ppo run configs/tiny-cpu.yaml trainer.nprocs=2     # metrics.jsonl / MLflow, one row a step

Means over ranks for per-rank statistics, the slowest rank's seconds for each phase (it sets
the pace), sums for token counts, and the reward statistics over every rank's scores. Every
rank calls `step_metrics` (each reduction is a collective); rank 0 logs the result.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator

import torch

from hpc_ppo import dist as hdist
from hpc_ppo.algo.advantages import masked_mean
from hpc_ppo.batch import RolloutBatch


class PhaseTimer:
    """Wall-clock seconds per named phase of a step (a phase entered twice adds up)."""

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start

    def total(self) -> dict[str, float]:
        """The phases plus `step`, the seconds since the timer was made."""
        return {**self.seconds, "step": time.perf_counter() - self.start}


GiB = 1024**3


def gpu_memory(device: torch.device, engine: object) -> dict[str, float]:
    """This step's GPU memory on this rank (empty on CPU), then the peak counters are reset.

    `gpu/peak_allocated_gib` / `gpu/peak_reserved_gib`: PyTorch's own peak (training: FSDP
    parameters, gradients, optimizer state, activations); `gpu/used_rollout_gib`: the whole
    device in use right after generation (vLLM awake + what training keeps resident), which
    PyTorch's counters do not see.
    """
    if device.type != "cuda":
        return {}
    out = {
        "gpu/peak_allocated_gib": torch.cuda.max_memory_allocated(device) / GiB,
        "gpu/peak_reserved_gib": torch.cuda.max_memory_reserved(device) / GiB,
    }
    used = getattr(engine, "used_bytes_awake", 0)
    if used:
        out["gpu/used_rollout_gib"] = used / GiB
    torch.cuda.reset_peak_memory_stats(device)
    return out


def step_metrics(
    batch: RolloutBatch,
    finished_frac: float,
    update_stats: dict[str, float],
    kl_ref: float,
    timer: PhaseTimer,
    maxima: dict[str, float] | None = None,
) -> dict[str, float]:
    """Everything logged for one step, identical on every rank (a collective). `maxima` are
    logged as their largest value over ranks (e.g. gpu_memory)."""
    mask = batch["response_mask"]
    local = {
        "actor/kl_ref": kl_ref,
        "actor/logprob_gap": float(
            masked_mean((batch["engine_logprobs"] - batch["old_logprobs"]).abs(), mask)
        ),
        "response/length_mean": float(mask.sum(-1).mean()),
        "response/finished_frac": finished_frac,
        **update_stats,
    }
    metrics = dict(zip(local, hdist.all_reduce(list(local.values()), "mean"), strict=True))
    seconds = timer.total()
    slowest = dict(zip(seconds, hdist.all_reduce(list(seconds.values()), "max"), strict=True))
    if maxima:
        metrics.update(zip(maxima, hdist.all_reduce(list(maxima.values()), "max"), strict=True))
    all_scores = hdist.all_gather_1d(batch["scores"].cpu())
    tokens = hdist.all_reduce([float(mask.sum()), float(batch["attention_mask"].sum())], "sum")
    metrics["reward/mean"] = float(all_scores.mean())
    metrics["reward/std"] = float(all_scores.std()) if all_scores.numel() > 1 else 0.0
    metrics.update({f"time/{k}": v for k, v in slowest.items()})
    metrics["perf/gen_tokens_per_s"] = tokens[0] / max(slowest.get("generate", 0.0), 1e-9)
    metrics["perf/tokens_per_s"] = tokens[1] / max(slowest["step"], 1e-9)
    metrics["perf/tokens"] = tokens[1]
    return metrics
