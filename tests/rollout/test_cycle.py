"""rollout/cycle.py: the order of engine calls, chunk seeds and offsets, and stopping between
chunks, against a fake engine that records what it is asked (the boundary).

Run: python -m pytest tests/rollout/test_cycle.py -q
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator

import torch

from hpc_ppo.rollout.base import RolloutEngine, Sample, SamplingSpec
from hpc_ppo.rollout.cycle import CHUNK_SEED_STRIDE, chunk_bounds, rollout

SPEC = SamplingSpec(n=2, temperature=0.7, top_p=1.0, max_new_tokens=4, seed=100)
PROMPTS = [[10 + i] for i in range(7)]  # prompt i is [10 + i]: samples show where they came from


class FakeEngine:
    """Records every call in `calls`; generates `n` one-token samples per prompt, numbered
    from 0 within each call (as an engine sees only its chunk)."""

    def __init__(self, calls: list[str]):
        self.calls = calls
        self.pushed: list[tuple[str, torch.Tensor]] = []
        self.specs: list[SamplingSpec] = []
        self.chunks: list[list[list[int]]] = []

    def generate(self, prompts: list[list[int]], sampling: SamplingSpec) -> list[Sample]:
        self.calls.append("generate")
        self.specs.append(sampling)
        self.chunks.append(prompts)
        return [
            Sample(i, p, [p[0], j], [-0.5, -0.25], False)
            for i, p in enumerate(prompts)
            for j in range(sampling.n)
        ]

    def push_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        self.calls.append("push_weights")
        self.pushed = list(weights)

    def sleep(self) -> None:
        self.calls.append("sleep")

    def wake_weights(self) -> None:
        self.calls.append("wake_weights")

    def wake_cache(self) -> None:
        self.calls.append("wake_cache")

    def close(self) -> None:
        self.calls.append("close")


def weights(calls: list[str]) -> Iterator[tuple[str, torch.Tensor]]:
    """A lazy stream, as full_state_iter gives (under FSDP each item is a collective)."""
    for name in ("a", "b", "c"):
        calls.append(f"weight {name}")
        yield name, torch.zeros(1)


def stopper(calls: list[str], answers: list[bool]):
    def should_stop() -> bool:
        calls.append("should_stop")
        return answers.pop(0)

    return should_stop


def test_fake_engine_is_a_rollout_engine():
    assert isinstance(FakeEngine([]), RolloutEngine)


def test_chunk_bounds_are_contiguous_near_equal_and_skip_empty_chunks():
    assert chunk_bounds(7, 3) == [(0, 2), (2, 5), (5, 7)]
    assert chunk_bounds(2, 4) == [(0, 1), (1, 2)]  # never an empty generate call
    assert chunk_bounds(5, 1) == [(0, 5)]


def test_calls_in_order_and_stop_asked_only_between_chunks():
    calls: list[str] = []
    engine = FakeEngine(calls)
    stream = weights(calls)
    samples = rollout(engine, stream, PROMPTS, SPEC, 3, stopper(calls, [False, False]))
    assert calls == [
        "wake_weights",
        "push_weights",
        "weight a",  # pulled by the engine while it pushes: not before wake_weights
        "weight b",
        "weight c",
        "wake_cache",
        "generate",
        "should_stop",
        "generate",
        "should_stop",
        "generate",
        "sleep",
    ]
    assert [name for name, _ in engine.pushed] == ["a", "b", "c"]
    assert next(stream, None) is None  # consumed to the end
    assert samples is not None and len(samples) == len(PROMPTS) * SPEC.n


def test_chunks_get_their_prompts_offsets_and_seeds():
    engine = FakeEngine([])
    samples = rollout(engine, iter([]), PROMPTS, SPEC, 3, lambda: False)
    assert engine.chunks == [PROMPTS[0:2], PROMPTS[2:5], PROMPTS[5:7]]
    assert [s.seed for s in engine.specs] == [
        100,
        100 + CHUNK_SEED_STRIDE,
        100 + 2 * CHUNK_SEED_STRIDE,
    ]
    assert {(s.n, s.temperature, s.top_p, s.max_new_tokens) for s in engine.specs} == {
        (2, 0.7, 1.0, 4)
    }
    # Grouped by prompt, in prompt order; prompt_index points into the whole prompt list.
    assert [s.prompt_index for s in samples] == [i for i in range(7) for _ in range(SPEC.n)]
    assert all(s.response_ids[0] == PROMPTS[s.prompt_index][0] for s in samples)


def test_stop_between_chunks_returns_none_with_the_engine_asleep():
    calls: list[str] = []
    engine = FakeEngine(calls)
    got = rollout(engine, weights(calls), PROMPTS, SPEC, 3, stopper(calls, [False, True]))
    assert got is None
    assert calls[-5:] == ["generate", "should_stop", "generate", "should_stop", "sleep"]
    assert calls.count("generate") == 2


def test_one_chunk_never_asks_to_stop():
    calls: list[str] = []
    got = rollout(FakeEngine(calls), iter([]), PROMPTS, SPEC, 1, stopper(calls, []))
    assert got is not None and "should_stop" not in calls


def test_timer_sees_wakes_push_each_generate_and_sleep():
    phases: list[str] = []

    @contextlib.contextmanager
    def timer(name: str):
        phases.append(name)
        yield

    rollout(FakeEngine([]), iter([]), PROMPTS, SPEC, 3, lambda: False, timer)
    assert phases == ["wake", "push", "wake", "generate", "generate", "generate", "sleep"]
