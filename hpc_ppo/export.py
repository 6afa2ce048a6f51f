"""`hpc-ppo export-hf RUN_DIR [--step N] OUT`: a transformers-loadable policy from a checkpoint.

    hpc-ppo export-hf runs/tiny-cpu-20261124-101500 exported/ && python -c \
        "import transformers; transformers.AutoModelForCausalLM.from_pretrained('exported')"

Runs in one process without torch.distributed: DCP reads the sharded checkpoint whatever the
number of ranks that wrote it.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import torch
from transformers import GenerationConfig

from hpc_ppo import checkpoint as ckpt
from hpc_ppo.config import BUILTIN_TINY_MODEL, load_config
from hpc_ppo.errors import ConfigError
from hpc_ppo.model import build_tokenizer, load_critic, load_policy


def load_run_weights(run_dir: Path, step: int | None = None) -> dict[str, torch.Tensor]:
    """Every trained model's parameters at `step` (default: newest) as "policy.<name>" /
    "critic.<name>" tensors, in this process: to compare runs, or to inspect one."""
    cfg = load_config(run_dir / "config.yaml")
    tokenizer = build_tokenizer(cfg.model)
    path = ckpt.resolve_step(run_dir, step)
    cpu, seed = torch.device("cpu"), cfg.trainer.seed  # the weights come from the checkpoint
    models = {"policy": load_policy(cfg.model, tokenizer, seed, restore_on=cpu)}
    if cfg.algo.name == "ppo":
        models["critic"] = load_critic(cfg.model, tokenizer, seed, restore_on=cpu)
    out = {}
    for name, model in models.items():
        ckpt.load_model_only(path, name, model)
        out.update({f"{name}.{k}": v for k, v in model.state_dict().items()})
    return out


def export_hf(run_dir: Path, out: Path, step: int | None = None, dtype: str = "auto") -> Path:
    """Write config, tokenizer and safetensors of the policy at `step` (default: newest), in
    `dtype` (auto: the run's model.dtype). Files get the usual permissions (umask), not the
    owner-only mode of transformers' temporary files, so a group can share the export."""
    if not (run_dir / "config.yaml").is_file():
        raise ConfigError(f"{run_dir}: not a run folder (no config.yaml)")
    if out.exists() and any(out.iterdir()):
        raise ConfigError(f"{out}: exists and is not empty; choose a new output folder")
    path = ckpt.resolve_step(run_dir, step)
    cfg = load_config(run_dir / "config.yaml")
    tokenizer = build_tokenizer(cfg.model)
    mc = cfg.model if dtype == "auto" else dataclasses.replace(cfg.model, dtype=dtype)
    # built for the restore: the checkpoint holds every weight (a 7B folder's 15-30 GB are
    # not read); DCP casts into this dtype
    model = load_policy(mc, tokenizer, cfg.trainer.seed, restore_on=torch.device("cpu"))
    ckpt.load_model_only(path, "policy", model)  # ConfigError when the shapes differ
    if (folder_generation := _generation_config(mc.path)) is not None:
        model.generation_config = folder_generation  # as from_pretrained would have set it
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    mode = 0o666 & ~_umask()
    for f in out.iterdir():
        if f.is_file():
            f.chmod(mode)
    return path


def _generation_config(path: str) -> GenerationConfig | None:
    """The model folder's generation_config.json (sampling defaults, stop tokens), which the
    export keeps as from_pretrained does; None for the built-in model or a folder without one."""
    if path == BUILTIN_TINY_MODEL:
        return None
    try:
        return GenerationConfig.from_pretrained(path)
    except OSError:  # no generation_config.json: the model's config defaults stand
        return None


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current
