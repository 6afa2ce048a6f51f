"""The one contract every rollout engine implements (vLLM in-rank on GPU, transformers on CPU).

    python -m pytest tests/rollout -q       # both engines' conformance and the cycle

The trainer drives an engine through the cycle DESIGN.md verified for vLLM:
`sleep()` -> train -> `wake_weights()` -> `push_weights(...)` -> `wake_cache()` -> `generate(...)`.
Engines hold their own copy of the policy weights, so both engines exercise the same
weight-sync path and name mapping; on CPU the sleep/wake calls are cheap no-ops.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:  # a hint only: the launcher's config check imports this module without torch
    import torch


@dataclass(frozen=True)
class SamplingSpec:
    """What to sample; `seed` makes a step's generation reproducible and equal across TP ranks.
    temperature 0 is greedy decoding (validation; vLLM's temperature=0, HF's do_sample=False)."""

    n: int
    temperature: float
    top_p: float
    max_new_tokens: int
    seed: int
    forced_lengths: tuple[int, int] | None = None  # rollout.forced_lengths (benchmarks)

    def forced_length(self, index: int) -> int | None:
        """Prompt `index`'s response length under `forced_lengths`, uniform in [lo, hi] and
        the same on every rank and engine for one (seed, index); None: the model decides."""
        if self.forced_lengths is None:
            return None
        lo, hi = self.forced_lengths
        digest = hashlib.blake2b(f"{self.seed}:{index}:length".encode(), digest_size=8).digest()
        return lo + int.from_bytes(digest, "big") % (hi - lo + 1)


@dataclass
class Sample:
    """One generated response: token ids and the engine's log-probability of each sampled token.

    Logprobs are "processed" (after temperature), matching what the trainer recomputes.
    `response_ids` ends with EOS when `finished`; nothing after it.
    """

    prompt_index: int
    prompt_ids: list[int]
    response_ids: list[int]
    logprobs: list[float]
    finished: bool


@runtime_checkable
class RolloutEngine(Protocol):
    def generate(self, prompts: list[list[int]], sampling: SamplingSpec) -> list[Sample]:
        """`sampling.n` samples per prompt, grouped: prompt 0's n samples first, then prompt 1's."""
        ...

    def push_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Load full (unsharded) tensors by Hugging Face parameter name."""
        ...

    def sleep(self) -> None:
        """Release GPU memory (weights and KV cache) for training."""
        ...

    def wake_weights(self) -> None: ...

    def wake_cache(self) -> None: ...

    def close(self) -> None: ...
