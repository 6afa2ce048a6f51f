"""A step's metrics: the phase timer and the cross-rank reductions behind every logged number.

    hpc-ppo run configs/tiny-cpu.yaml trainer.nprocs=2     # metrics.jsonl / MLflow, one row a step

Means over ranks for per-rank statistics, the slowest rank's seconds for each phase (it sets
the pace), sums for token counts, and the reward statistics over every rank's scores. Every
rank calls `step_metrics` (each reduction is a collective); rank 0 logs the result.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator

import torch

from hpc_ppo import dist as hdist
from hpc_ppo.algo.advantages import masked_mean
from hpc_ppo.batch import RolloutBatch, row_lengths


class PhaseTimer:
    """Wall-clock seconds per named phase of a step (a phase entered twice adds up)."""

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            with torch.profiler.record_function(f"phase/{name}"):  # named in profiles
                yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start

    def total(self) -> dict[str, float]:
        """The phases plus `step`, the seconds since the timer was made."""
        return {**self.seconds, "step": time.perf_counter() - self.start}


def process_age() -> float | None:
    """Seconds since this process started (Linux /proc), interpreter start-up included; None
    where /proc is missing."""
    try:
        fields = open("/proc/self/stat").read().rsplit(")", 1)[1].split()
        ticks = int(fields[19])  # starttime, field 22 of proc(5): clock ticks after boot
        uptime = float(open("/proc/uptime").read().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return max(0.0, uptime - ticks / os.sysconf("SC_CLK_TCK"))


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
    # NVML's busy share over its last sample period (up to 1 s), read at the step's end (the
    # update): a cheap hint, not an average over the step. Needs pynvml; absent without it.
    with contextlib.suppress(Exception):
        out["gpu/utilization_pct"] = float(torch.cuda.utilization(device))
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
    computed_tokens: int | None = None,
) -> dict[str, float]:
    """Everything logged for one step, identical on every rank (a collective). `maxima` are
    logged as their largest value over ranks (e.g. gpu_memory). `computed_tokens`: the token
    positions one forward pass over the step's micro-batches computes (batch.computed_tokens);
    `perf/padding_fraction` is the share of them that were padding."""
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
    real = float(batch["attention_mask"].sum())
    computed = real if computed_tokens is None else float(computed_tokens)
    tokens = hdist.all_reduce([float(mask.sum()), real, computed], "sum")
    metrics["reward/mean"] = float(all_scores.mean())
    metrics["reward/std"] = float(all_scores.std()) if all_scores.numel() > 1 else 0.0
    metrics.update({f"time/{k}": v for k, v in slowest.items()})
    metrics["perf/gen_tokens_per_s"] = tokens[0] / max(slowest.get("generate", 0.0), 1e-9)
    metrics["perf/tokens_per_s"] = tokens[1] / max(slowest["step"], 1e-9)
    metrics["perf/tokens"] = tokens[1]
    metrics["perf/padding_fraction"] = max(0.0, 1.0 - tokens[1] / max(tokens[2], 1.0))
    metrics["response/clip_ratio"] = 1.0 - metrics["response/finished_frac"]
    metrics.update(batch_stats(batch))
    return metrics


def batch_stats(batch: RolloutBatch) -> dict[str, float]:
    """Mean, min and max over all ranks of prompt and response lengths (per sample) and of
    advantages, returns and values (per response token), and the critic's explained variance
    1 - Var(returns - values) / Var(returns) (verl's `critic/vf_explained_var`). A collective."""
    prompt, response = row_lengths(batch)
    mask = batch["response_mask"].bool()
    series = {"prompt/length": prompt.double(), "response/length": response.double()}
    for key in ("advantages", "returns", "values"):
        if key in batch:
            series[f"critic/{key}"] = batch[key][mask].detach().double().cpu()
    sums = hdist.all_reduce(
        [v for x in series.values() for v in (float(x.sum()), x.numel())], "sum"
    )
    ext = hdist.all_reduce([v for x in series.values() for v in (_top(x), _top(-x))], "max")
    out = {}
    for i, name in enumerate(series):
        out[f"{name}_mean"] = float(sums[2 * i] / max(sums[2 * i + 1], 1))
        out[f"{name}_max"], out[f"{name}_min"] = float(ext[2 * i]), -float(ext[2 * i + 1])
    del out["response/length_mean"]  # step_metrics logs it (the mean of rank means)
    if "critic/returns" in series and "critic/values" in series:
        ret, diff = series["critic/returns"], series["critic/returns"] - series["critic/values"]
        moments = [
            float(ret.sum()),
            float((ret * ret).sum()),
            float(diff.sum()),
            float((diff * diff).sum()),
        ]
        s = hdist.all_reduce(moments, "sum")
        n = max(sums[2 * list(series).index("critic/returns") + 1], 1)
        var_ret, var_diff = s[1] / n - (s[0] / n) ** 2, s[3] / n - (s[2] / n) ** 2
        out["critic/vf_explained_var"] = 1.0 - var_diff / var_ret if var_ret > 1e-12 else 0.0
    return out


def _top(x: torch.Tensor) -> float:
    return float(x.max()) if x.numel() else float("-inf")
