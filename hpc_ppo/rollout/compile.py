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

CUDA graphs are captured for decode batches up to `rollout.cudagraph_max_batch`; by default
the sequences one step sends the engine (vLLM's own default is 512, 51 graphs captured at every
start although a step of 256 sequences never runs a batch above 256). A larger batch (a
validation set bigger than a step) runs without graphs until it shrinks below the limit.

Pure functions of the config and the all-reduce plan: tested on CPU.
"""

from __future__ import annotations

from typing import Any

VLLM_MAX_GRAPH_BATCH = 512  # vLLM's default limit: min(2 x max_num_seqs, 512)


def graph_batch_limit(setting: int | None, sequences_per_step: int) -> int:
    """The largest decode batch to capture: `rollout.cudagraph_max_batch`, or the step's
    sequences rounded up to vLLM's next capture size (1, 2, 4, multiples of 8 to 256, of 16
    above), at most vLLM's default."""
    if setting is not None:
        return setting
    n = max(1, sequences_per_step)
    if n <= 4:
        return 1 << (n - 1).bit_length()
    stride = 8 if n <= 256 else 16
    return min(VLLM_MAX_GRAPH_BATCH, -(-n // stride) * stride)


def compilation_config(
    compile: bool, enforce_eager: bool, allreduce: dict[str, Any] | None, graph_batch: int
) -> dict[str, Any] | None:
    """LLM(compilation_config=...) for these settings, merged with the all-reduce plan's part
    (a fused all-reduce without compiling is refused by the config's validation)."""
    if enforce_eager:  # no graphs, and vLLM compiles nothing
        return allreduce
    graphs = {**(allreduce or {}), "max_cudagraph_capture_size": graph_batch}
    if compile:  # vLLM's own compile defaults
        return graphs
    # mode 0: no torch.compile; graphs of whole decode steps need no piecewise split
    return {**graphs, "mode": 0, "cudagraph_mode": "FULL_DECODE_ONLY"}


def describe(compile: bool, enforce_eager: bool, graph_batch: int) -> str:
    """How the engine runs the model, for its log."""
    if enforce_eager:
        return "eager (rollout.enforce_eager=true)"
    graphs = f"batches up to {graph_batch} (rollout.cudagraph_max_batch)"
    if compile:
        return f"torch.compile + CUDA graphs of {graphs}"
    return f"CUDA graphs of decode steps of {graphs}, not compiled (rollout.compile=false)"
