"""Every rule a config must meet, in one place: field checks (bounds, choices, finite), rules
across fields, and the rules of the world a launcher starts.

    hpc-ppo validate configs/tiny-cpu.yaml                  # the rules for `hpc-ppo run`
    hpc-ppo validate configs/qwen2-7b.yaml --launcher slurm # ... for `hpc-ppo submit`

`validate` returns every problem at once, one line each naming the key, the value and the fix.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import typing
from pathlib import Path
from typing import Any

from hpc_ppo.config.schema import BUILTIN_TINY_MODEL, Config
from hpc_ppo.errors import ConfigError


def validate(cfg: Config, check_paths: bool = True) -> list[str]:
    """All problems with a built config, each one line naming key, value and fix."""
    errors: list[str] = []
    _check_fields(cfg, "", errors)
    _check_cross_fields(cfg, errors, check_paths)
    return errors


def world_size_for(cfg: Config, launcher: str) -> int:
    """Ranks of a job of `cfg`: trainer.nprocs under `hpc-ppo run` ("local"), slurm.nodes x
    tasks per node under `hpc-ppo submit` or a rendered sbatch script ("slurm")."""
    if launcher == "local":
        return cfg.trainer.nprocs
    if launcher == "slurm":
        return cfg.slurm.world_size
    raise ValueError(f"launcher={launcher!r}: expected 'local' or 'slurm'")


def world_errors(cfg: Config, launcher: str) -> list[str]:
    """Batch rules for the world `launcher` starts: every rank takes an equal share of each
    mini-batch (so also of the step's batch, which mini-batches divide)."""
    a, world = cfg.algo, world_size_for(cfg, launcher)
    if launcher == "local":
        source = f"trainer.nprocs={world}"
    else:
        s = cfg.slurm
        source = f"the Slurm world size {world} (slurm.nodes={s.nodes} x {s.ntasks_per_node} tasks per node)"
    # Divisors below 1 were already reported by their range check.
    if world >= 1 and a.mini_batch_size >= 1 and a.mini_batch_size % world:
        return [
            f"algo.mini_batch_size={a.mini_batch_size} must be a multiple of {source}"
            " (every rank takes an equal share of each mini-batch)"
        ]
    return []


def _check_fields(obj: Any, prefix: str, errors: list[str]) -> None:
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        key = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(value):
            _check_fields(value, f"{key}.", errors)
            continue
        m = f.metadata
        if m.get("choices") and value not in m["choices"]:
            close = difflib.get_close_matches(str(value), [str(c) for c in m["choices"]], n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            errors.append(
                f"{key}={value!r}: must be one of {', '.join(map(str, m['choices']))}{hint}"
            )
        if isinstance(value, float) and not math.isfinite(value):
            errors.append(f"{key}={value}: must be a finite number")
            continue
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            bounds = [
                (m.get("ge"), ">=", value >= (m.get("ge") or 0)),
                (m.get("gt"), ">", value > (m.get("gt") or 0)),
                (m.get("le"), "<=", value <= (m.get("le") or 0)),
                (m.get("lt"), "<", value < (m.get("lt") or 0)),
            ]
            for bound, op, ok in bounds:
                if bound is not None and not ok:
                    errors.append(f"{key}={value}: must be {op} {bound}{_range_text(m)}")
                    break


def _range_text(m: typing.Mapping[str, Any]) -> str:
    lo = (
        f"[{m['ge']}"
        if m.get("ge") is not None
        else f"({m['gt']}"
        if m.get("gt") is not None
        else "(-inf"
    )
    hi = (
        f"{m['le']}]"
        if m.get("le") is not None
        else f"{m['lt']})"
        if m.get("lt") is not None
        else "inf)"
    )
    return f" (allowed range {lo}, {hi})"


def _check_cross_fields(cfg: Config, errors: list[str], check_paths: bool = True) -> None:
    t, a, r = cfg.trainer, cfg.algo, cfg.rollout
    # Divisors below 1 were already reported by their range check; skip the rule, not crash.
    if a.mini_batch_size >= 1 and t.batch_size % a.mini_batch_size:
        errors.append(
            f"algo.mini_batch_size={a.mini_batch_size} must divide trainer.batch_size={t.batch_size}"
        )
    errors.extend(world_errors(cfg, "local"))  # the Slurm world: launch.sbatch.slurm_errors
    for section in ("actor", "critic"):
        betas = getattr(cfg, section).betas
        if not all(0.0 <= b < 1.0 for b in betas):  # also rejects nan
            errors.append(
                f"{section}.betas={list(betas)}: each beta must be in [0, 1) (Adam's moment decay rates)"
            )
    if a.name == "grpo" and r.n < 2:
        errors.append(
            f"rollout.n={r.n}: GRPO needs at least 2 samples per prompt to normalise by group"
        )
    if cfg.data.synthetic.min_len > cfg.data.synthetic.max_len:
        errors.append(
            f"data.synthetic.min_len={cfg.data.synthetic.min_len} exceeds data.synthetic.max_len={cfg.data.synthetic.max_len}"
        )
    m = cfg.model
    if check_paths and m.path != BUILTIN_TINY_MODEL:
        if not Path(m.path).is_dir():
            errors.append(
                f"model.path={m.path}: directory not found (or use model.path={BUILTIN_TINY_MODEL})"
            )
        elif not (Path(m.path) / "config.json").is_file():
            errors.append(
                f"model.path={m.path}: no config.json inside; expected a Hugging Face model directory"
            )
    if (
        check_paths
        and m.critic_path is not None
        and not (Path(m.critic_path) / "config.json").is_file()
    ):
        errors.append(
            f"model.critic_path={m.critic_path}: no Hugging Face model directory (config.json) there"
        )
    if m.path == BUILTIN_TINY_MODEL:
        tiny = m.tiny
        if tiny.num_attention_heads >= 1 and tiny.hidden_size % tiny.num_attention_heads:
            errors.append(
                f"model.tiny.num_attention_heads={tiny.num_attention_heads} must divide model.tiny.hidden_size={tiny.hidden_size}"
            )
        if tiny.num_key_value_heads >= 1 and tiny.num_attention_heads % tiny.num_key_value_heads:
            errors.append(
                f"model.tiny.num_key_value_heads={tiny.num_key_value_heads} must divide model.tiny.num_attention_heads={tiny.num_attention_heads}"
            )
    if check_paths and cfg.data.path is not None:
        from hpc_ppo.data import validate_prompt_file

        try:
            validate_prompt_file(cfg.data.path, cfg.data.prompt_key, cfg.data.answer_key)
        except ConfigError as e:
            errors.append(str(e))
    from hpc_ppo.reward import resolve_reward_fn

    try:
        resolve_reward_fn(cfg.reward.fn)
    except ConfigError as e:
        errors.append(str(e))
    if r.engine == "vllm" and t.device == "cpu":
        errors.append(
            "rollout.engine=vllm needs trainer.device=cuda (or auto on a GPU node); use rollout.engine=hf on CPU"
        )
    if r.engine == "vllm" and r.tp > 1:
        # A TP group is rollout.tp consecutive ranks, so the rank count must be a multiple.
        s = cfg.slurm
        ranks, name = (
            (s.world_size, f"slurm.nodes x tasks per node = {s.world_size}")
            if s.gpus_per_node > 0
            else (t.nprocs, f"trainer.nprocs={t.nprocs}")
        )
        if ranks % r.tp:
            errors.append(
                f"rollout.tp={r.tp} must divide the number of GPU ranks ({name}): "
                f"each tensor-parallel group is {r.tp} consecutive ranks"
            )
