"""How the in-rank vLLM engine runs the model: compiled, CUDA graphs only, or eager
(`rollout.compile`, `rollout.enforce_eager`).

    python bench/step.py --shape 0.5b --steps 6 rollout.compile=false   # cold start without compiling

vLLM's default compiles the model with torch.compile (Inductor, piecewise CUDA graphs plus
full ones for decode). On a cold cache that compile costs ~20 s of every first start on a node
(0.5B shape, H200; docs/PERFORMANCE.md), and a requeue still pays the Dynamo trace and the
cache load. `rollout.compile=false` skips torch.compile and still captures CUDA graphs of whole
decode steps (vLLM's FULL_DECODE_ONLY; prefill runs eager), which is what removes the per-token
launch overhead. Which one is faster per step depends on the model and batch: measure with
bench/step.py before choosing for a long run.

Pure functions of the config and the all-reduce plan: tested on CPU.
"""

from __future__ import annotations

from typing import Any


def compilation_config(
    compile: bool, enforce_eager: bool, allreduce: dict[str, Any] | None
) -> dict[str, Any] | None:
    """LLM(compilation_config=...) for these settings, merged with the all-reduce plan's part
    (a fused all-reduce without compiling is refused by the config's validation)."""
    if compile or enforce_eager:  # vLLM's own defaults; enforce_eager already means no compile
        return allreduce
    # mode 0: no torch.compile; graphs of whole decode steps need no piecewise split
    return {**(allreduce or {}), "mode": 0, "cudagraph_mode": "FULL_DECODE_ONLY"}


def describe(compile: bool, enforce_eager: bool) -> str:
    """How the engine runs the model, for its log."""
    if enforce_eager:
        return "eager (rollout.enforce_eager=true)"
    if compile:
        return "torch.compile + CUDA graphs"
    return "CUDA graphs of decode steps, not compiled (rollout.compile=false)"
