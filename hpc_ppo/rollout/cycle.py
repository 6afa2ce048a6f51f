"""The rollout stage: wake -> push weights -> wake the KV cache -> generate in chunks -> sleep.

    hpc-ppo run configs/tiny-cpu.yaml rollout.chunks=4     # every training step runs it

One home for the cycle DESIGN.md verified for vLLM, shared by training and (later) validation.
It knows nothing of FSDP or signals: the caller passes the weights to push (a lazy iterator;
under FSDP each item is a collective, so every rank consumes all of it) and `should_stop`,
asked between chunks (a collective when ranks must agree: every rank asks at the same points).
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager

import torch

from hpc_ppo.rollout.base import RolloutEngine, Sample, SamplingSpec

# Chunk c of a rollout samples with seed + c * CHUNK_SEED_STRIDE: chunks never share a stream.
CHUNK_SEED_STRIDE = 7919
Timer = Callable[[str], AbstractContextManager[None]]


def chunk_bounds(n: int, chunks: int) -> list[tuple[int, int]]:
    """Split n items into `chunks` contiguous, near-equal ranges (same count on every rank)."""
    edges = [round(i * n / chunks) for i in range(chunks + 1)]
    return [(edges[i], edges[i + 1]) for i in range(chunks) if edges[i + 1] > edges[i]]


def _untimed(name: str) -> AbstractContextManager[None]:
    return contextlib.nullcontext()


def rollout(
    engine: RolloutEngine,
    weights: Iterable[tuple[str, torch.Tensor]],
    prompts: list[list[int]],
    sampling: SamplingSpec,
    chunks: int,
    should_stop: Callable[[], bool],
    timer: Timer = _untimed,
) -> list[Sample] | None:
    """`sampling.n` samples per prompt (grouped by prompt, indices into `prompts`), or None
    when `should_stop()` said yes between two chunks (the engine is asleep again either way).

    Timed phases: `wake` (weights, then KV cache), `push`, `generate` (all chunks), `sleep`.
    """
    with timer("wake"):
        engine.wake_weights()
    with timer("push"):
        engine.push_weights(weights)
    with timer("wake"):
        engine.wake_cache()
    samples: list[Sample] = []
    stopped = False
    for c, (lo, hi) in enumerate(chunk_bounds(len(prompts), chunks)):
        if c > 0 and should_stop():
            stopped = True
            break
        spec = dataclasses.replace(sampling, seed=sampling.seed + CHUNK_SEED_STRIDE * c)
        with timer("generate"):
            chunk = engine.generate(prompts[lo:hi], spec)
        for s in chunk:
            s.prompt_index += lo
        samples.extend(chunk)
    with timer("sleep"):
        engine.sleep()
    return None if stopped else samples
