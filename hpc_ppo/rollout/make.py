"""Build a run's rollout engine from its config: the one place that picks an engine.

    hpc-ppo run configs/tiny-cpu.yaml                  # rollout.engine=hf (transformers, CPU)
    hpc-ppo run configs/gpu-smoke-0.5b.yaml            # rollout.engine=vllm (in-rank, GPU)

The engines take only what they use (the rollout and model sections, a seed, the prompt
length cap); this factory is where the tree is split for them, for the trainer, the benches
and the GPU tests alike.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.distributed as dist
from transformers import PreTrainedTokenizerBase

from hpc_ppo.config import Config
from hpc_ppo.model import load_policy
from hpc_ppo.rollout.base import RolloutEngine


def make_engine(
    cfg: Config, tokenizer: PreTrainedTokenizerBase, device: torch.device, run_dir: Path
) -> RolloutEngine:
    """`rollout.engine`'s engine for this rank (vLLM: call on every rank at the same time)."""
    if cfg.rollout.engine == "vllm":
        from hpc_ppo.rollout.vllm_engine import VLLMEngine  # only GPU installs have vllm

        return VLLMEngine(
            cfg.rollout,
            cfg.model,
            tokenizer,
            device,
            seed=cfg.trainer.seed,
            max_prompt_tokens=cfg.data.max_prompt_tokens,
            run_dir=run_dir,
            sequences_per_step=sequences_per_step(cfg, dist.get_world_size()),
        )
    from hpc_ppo.rollout.hf_engine import HFEngine

    model = load_policy(cfg.model, tokenizer, cfg.trainer.seed)
    return HFEngine(model, tokenizer.eos_token_id, tokenizer.pad_token_id, device)


def sequences_per_step(cfg: Config, world_size: int) -> int:
    """What one training step's rollout sends each vLLM engine: this rank's prompts times
    rollout.n, from every rank of its TP group (the engine generates for the whole group)."""
    r = cfg.rollout
    return math.ceil(cfg.trainer.batch_size / world_size) * r.n * r.tp
