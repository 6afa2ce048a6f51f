"""How the in-rank vLLM engine all-reduces across a tensor-parallel group (`rollout.allreduce`).

    hpc-ppo run configs/gpu-step.yaml trainer.nprocs=2 rollout.tp=2     # logs the path it uses

vLLM 0.26 on Hopper/Blackwell with TP > 1 turns on, by default, an all-reduce + RMSNorm fusion
whose FlashInfer backend ("mnnvl") builds an NVLink multicast buffer, and an all-reduce over
torch symmetric memory that wants multicast too. Many clusters have no usable multicast: on a
2 x H200 host a TP=2 engine crashed in its profile run (illegal memory access, DESIGN.md). So
the project decides, not vLLM's defaults:

- `custom` (default): vLLM's custom all-reduce over CUDA IPC (peer-to-peer), NCCL where that
  does not apply; fusion off; symmetric memory off. Never NVLink multicast.
- `fused`: `custom` plus the all-reduce + RMSNorm fusion on FlashInfer's "trtllm" backend
  (CUDA IPC, one node only). Its first start JIT-compiles the fused kernel (~200 s measured,
  cached in rollout.cache_dir afterwards).
- `vllm`: whatever vLLM picks (may use multicast); refused where the environment has turned
  multicast off (NCCL_NVLS_ENABLE=0, ...), since vLLM would try it anyway.

Pure functions of (mode, TP size, environment, TP hosts): tested on CPU.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

MODES = ("custom", "fused", "vllm")
# Variables with which a site (or our GPU hosts) says "no NVLink multicast here".
MULTICAST_OFF = {
    "NCCL_NVLS_ENABLE": "0",
    "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1",
    "NVSHMEM_DISABLE_NVLS": "1",
}


@dataclass(frozen=True)
class AllReducePlan:
    """What to set before vLLM starts: environment variables and LLM(compilation_config=...)."""

    env: dict[str, str] = field(default_factory=dict)
    compilation_config: dict[str, Any] | None = None
    description: str = ""


def plan_allreduce(
    mode: str, tp: int, environ: Mapping[str, str], tp_hosts: Sequence[str] = ()
) -> AllReducePlan:
    """The plan for `rollout.allreduce=mode`; ValueError (naming the key and the fix) for a
    mode this host or this TP group cannot run."""
    if mode not in MODES:
        raise ValueError(f"rollout.allreduce={mode!r}: must be one of {', '.join(MODES)}")
    if tp == 1:
        return AllReducePlan(description="TP=1: no all-reduce in the rollout engine")
    if mode == "vllm":
        off = [f"{k}={environ[k]}" for k, v in MULTICAST_OFF.items() if environ.get(k) == v]
        if off:
            raise ValueError(
                f"rollout.allreduce=vllm lets vLLM use NVLink multicast (FlashInfer mnnvl, "
                f"symmetric memory), but this environment turns multicast off ({', '.join(off)}): "
                "use rollout.allreduce=custom (or fused)"
            )
        return AllReducePlan(
            description=f"TP={tp}: vLLM's own all-reduce choices (may use multicast)"
        )
    fused = mode == "fused"
    if fused and len(set(tp_hosts)) > 1:
        raise ValueError(
            f"rollout.allreduce=fused: FlashInfer's trtllm fusion works within one node, but this "
            f"TP group spans {sorted(set(tp_hosts))}: use rollout.allreduce=custom, or keep each "
            "group of rollout.tp consecutive ranks on one node (tasks per node a multiple of tp)"
        )
    env = {
        "VLLM_ALLREDUCE_USE_SYMM_MEM": "0",  # its rendezvous creates a multicast object
        "VLLM_ALLREDUCE_USE_FLASHINFER": "0",
        "VLLM_FLASHINFER_ALLREDUCE_BACKEND": "trtllm",  # never "auto" -> mnnvl (multicast)
    }
    overridden = [f"{k}={environ[k]}" for k, v in env.items() if k in environ and environ[k] != v]
    description = (
        f"TP={tp}: vLLM custom all-reduce (CUDA IPC) with NCCL fallback; "
        + ("all-reduce+RMSNorm fusion on (FlashInfer trtllm, CUDA IPC)" if fused else "fusion off")
        + "; symmetric memory off; no NVLink multicast"
        + (f" (overrides {', '.join(overridden)} from the environment)" if overridden else "")
    )
    return AllReducePlan(
        env=env,
        compilation_config={"pass_config": {"fuse_allreduce_rms": fused}},
        description=description,
    )
