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

A pure function of the config and the all-reduce plan: tested on CPU.
"""

from __future__ import annotations

from typing import Any


def compilation_config(
    compile: bool, enforce_eager: bool, allreduce: dict[str, Any] | None
) -> dict[str, Any] | None:
    """LLM(compilation_config=...) for these settings, merged with the all-reduce plan's part;
    ValueError (naming the keys and the fix) for a fusion that needs the compile."""
    fused = bool((allreduce or {}).get("pass_config", {}).get("fuse_allreduce_rms"))
    if fused and (not compile or enforce_eager):
        raise ValueError(
            "rollout.allreduce=fused is a torch.compile pass, but "
            + ("rollout.enforce_eager=true" if enforce_eager else "rollout.compile=false")
            + " turns compiling off: use rollout.allreduce=custom, or compile"
        )
    if compile or enforce_eager:  # vLLM's own defaults; enforce_eager already means no compile
        return allreduce
    # mode 0: no torch.compile; graphs of whole decode steps need no piecewise split
    return {**(allreduce or {}), "mode": 0, "cudagraph_mode": "FULL_DECODE_ONLY"}
