"""Every rule a config must meet, in one place: field checks (bounds, choices, finite), rules
across fields, the Slurm values, and the rules of the world a launcher starts.

    hpc-ppo validate configs/tiny-cpu.yaml                    # the rules for `hpc-ppo run`
    hpc-ppo validate configs/qwen2-7b.yaml --launcher slurm   # ... for `hpc-ppo submit`

`validate` returns every problem at once, one line each naming the key, the value and the fix.
The world rules (rank counts) need the launcher: `hpc-ppo run` starts trainer.nprocs ranks,
Slurm starts slurm.nodes x tasks per node; rules that hold whatever starts the job (a Slurm
time limit's format included) always run.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib.util
import math
import typing
import unicodedata
from pathlib import Path
from typing import Any, Literal

from hpc_ppo.config.schema import BUILTIN_TINY_MODEL, Config
from hpc_ppo.config.slurm_rules import slurm_field_errors, slurm_job_errors
from hpc_ppo.errors import ConfigError

Launcher = Literal["local", "slurm"]
LAUNCHERS: tuple[Launcher, ...] = ("local", "slurm")


def validate(
    cfg: Config, *, launcher: Launcher | None = None, check_paths: bool = True
) -> list[str]:
    """All problems with a built config, each one line naming key, value and fix.

    launcher: "local" (`hpc-ppo run`), "slurm" (submit, render-sbatch, prepare), or None: only
    the rules every launcher shares (a rank reading its run folder's config back; the launcher
    checked the world before it started the ranks).
    check_paths=False skips the checks that model and data paths exist on this machine.
    """
    errors: list[str] = []
    _check_fields(cfg, "", errors)
    _check_cross_fields(cfg, errors, check_paths)
    errors.extend(run_name_errors(cfg.trainer.run_name))
    errors.extend(slurm_field_errors(cfg.slurm))
    if launcher is not None:
        errors.extend(world_errors(cfg, launcher))
        errors.extend(_tp_errors(cfg, launcher))
    if launcher == "slurm":
        errors.extend(slurm_job_errors(cfg))
    return errors


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


def _check_cross_fields(cfg: Config, errors: list[str], check_paths: bool) -> None:
    t, a, r = cfg.trainer, cfg.algo, cfg.rollout
    # Divisors below 1 were already reported by their range check; skip the rule, not crash.
    if a.mini_batch_size >= 1 and t.batch_size % a.mini_batch_size:
        errors.append(
            f"algo.mini_batch_size={a.mini_batch_size} must divide trainer.batch_size={t.batch_size}"
        )
    for section in ("actor", "critic"):
        betas = getattr(cfg, section).betas
        if not all(0.0 <= b < 1.0 for b in betas):  # also rejects nan
            errors.append(
                f"{section}.betas={list(betas)}: each beta must be in [0, 1) (Adam's moment decay rates)"
            )
    for section in ("actor", "critic"):
        oc = getattr(cfg, section)
        if oc.warmup_steps > 0 and oc.warmup_ratio > 0:
            errors.append(
                f"{section}.warmup_steps={oc.warmup_steps} and {section}.warmup_ratio="
                f"{oc.warmup_ratio}: give the warmup one way; set the other to 0"
            )
    if cfg.tracking.tensorboard and importlib.util.find_spec("tensorboard") is None:
        errors.append(
            "tracking.tensorboard=true needs the tensorboard package, which is not installed: "
            "pip install 'hpc-ppo[tensorboard]' (or set tracking.tensorboard=false)"
        )
    if a.name == "grpo" and r.n < 2:
        errors.append(
            f"rollout.n={r.n}: GRPO needs at least 2 samples per prompt to normalise by group"
        )
    late = [s for s in t.profile_steps if not 0 <= s < t.total_steps]
    if late:
        errors.append(
            f"trainer.profile_steps={list(t.profile_steps)}: steps {late} never run (steps are"
            f" 0 .. {t.total_steps - 1} with trainer.total_steps={t.total_steps}); drop them"
        )
    if r.forced_lengths is not None:
        lo, hi = r.forced_lengths
        if not 1 <= lo <= hi <= r.max_new_tokens:
            errors.append(
                f"rollout.forced_lengths={list(r.forced_lengths)}: need 1 <= lo <= hi <="
                f" rollout.max_new_tokens={r.max_new_tokens}: e.g. rollout.forced_lengths="
                f"[1,{r.max_new_tokens}], or raise rollout.max_new_tokens"
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
    count, source = cfg.data.synthetic.num_prompts, "data.synthetic.num_prompts"
    sources: set[str] | None = None  # the data's sources, where the files were read
    if check_paths and cfg.data.path is not None:
        from hpc_ppo.data import validate_prompt_file

        try:
            prompts = validate_prompt_file(cfg.data.path, cfg.data.prompt_key, cfg.data.answer_key)
            count, sources = len(prompts), {p.source for p in prompts}
            source = f"data.path={_shown(cfg.data.path)} holds {count} prompts"
        except ConfigError as e:
            errors.append(str(e))
    if (cfg.data.path is None or check_paths) and count < t.batch_size:
        # The sampler draws a step's prompts without repeats within an epoch.
        what = source if cfg.data.path is not None else f"{source}={count}"
        errors.append(
            f"{what}, fewer than trainer.batch_size={t.batch_size} (prompts per step): lower "
            "trainer.batch_size or add prompts"
        )
    errors.extend(_validation_errors(cfg, check_paths, sources))
    errors.extend(_reward_errors(cfg, sources))
    if r.engine == "vllm" and r.tp > 1 and r.allreduce == "fused":
        off = "rollout.enforce_eager=true" if r.enforce_eager else "rollout.compile=false"
        if r.enforce_eager or not r.compile:
            errors.append(
                f"rollout.allreduce=fused is a torch.compile pass, but {off} turns compiling"
                " off: use rollout.allreduce=custom, or compile"
            )
    if r.engine == "vllm" and t.device == "cpu":
        errors.append(
            "rollout.engine=vllm needs trainer.device=cuda (or auto on a GPU node); use rollout.engine=hf on CPU"
        )


def _validation_errors(cfg: Config, check_paths: bool, sources: set[str] | None) -> list[str]:
    """Validation needs held-out prompts; greedy decoding needs one sample. Adds the validation
    set's sources to `sources` (reward.by_source may name them)."""
    t, r, d = cfg.trainer, cfg.rollout, cfg.data
    errors = []
    if d.val_path is None and (t.val_every > 0 or t.val_before_train):
        what = f"trainer.val_every={t.val_every}" if t.val_every else "trainer.val_before_train"
        errors.append(f"{what} needs held-out prompts: set data.val_path=<.jsonl or .parquet>")
    if r.val_temperature == 0 and r.val_n > 1:
        errors.append(
            f"rollout.val_n={r.val_n} with rollout.val_temperature=0 (greedy) gives {r.val_n}"
            " identical responses: set rollout.val_n=1 or a rollout.val_temperature > 0"
        )
    if check_paths and d.val_path is not None:
        from hpc_ppo.data import validate_prompt_file

        try:
            found = validate_prompt_file(d.val_path, d.prompt_key, d.answer_key, "data.val_path")
            if sources is not None:
                sources.update(p.source for p in found)
        except ConfigError as e:
            errors.append(str(e))
    return errors


def _reward_errors(cfg: Config, sources: set[str] | None) -> list[str]:
    """Every reward resolves (a built-in, or an importable function of the right signature);
    each reward.by_source name is a source of the data, when the files were read."""
    from hpc_ppo.reward import parse_by_source, resolve_reward_fn

    errors = []
    try:
        by_source = parse_by_source(cfg.reward.by_source)
    except ConfigError as e:
        return [str(e)]
    specs = {"reward.fn": cfg.reward.fn}
    specs.update({f"reward.by_source[{i}]": v for i, v in enumerate(by_source.values())})
    for key, spec in specs.items():
        try:
            resolve_reward_fn(spec, key)
        except ConfigError as e:
            errors.append(str(e))
    if sources is not None:
        for name in by_source:
            if name not in sources:
                close = difflib.get_close_matches(name, sorted(sources), n=1)
                hint = f"did you mean {close[0]!r}? " if close else ""
                errors.append(
                    f"reward.by_source: no row of the data has source {name!r}; {hint}sources:"
                    f" {', '.join(sorted(sources))} (a row's data_source, else its file's name)"
                )
    return errors


def _shown(path: str | list[str]) -> str:
    return path if isinstance(path, str) else f"[{', '.join(path)}]"


def world_size_for(cfg: Config, launcher: Launcher) -> int:
    """Ranks of a job of `cfg`: trainer.nprocs under `hpc-ppo run` ("local"), slurm.nodes x
    tasks per node under `hpc-ppo submit` or a rendered sbatch script ("slurm")."""
    if launcher == "local":
        return cfg.trainer.nprocs
    if launcher == "slurm":
        return cfg.slurm.world_size
    raise ValueError(f"launcher={launcher!r}: expected one of {', '.join(LAUNCHERS)}")


def world_errors(cfg: Config, launcher: Launcher) -> list[str]:
    """Batch rules for the world `launcher` starts: every rank takes an equal share of each
    mini-batch (so also of the step's batch, which mini-batches divide)."""
    a, world = cfg.algo, world_size_for(cfg, launcher)
    if launcher == "local":
        source = f"trainer.nprocs={world}"
    else:
        s = cfg.slurm
        source = f"the Slurm world size {world} (slurm.nodes={s.nodes} x {s.ntasks_per_node} tasks per node)"
    error = mini_batch_error(a.mini_batch_size, world, source)
    return [error] if error else []


def mini_batch_error(mini_batch_size: int, world: int, world_is: str) -> str | None:
    """The batch rule for `world` ranks, checked before launch (`world_errors`) and inside a
    batch job for the tasks Slurm really gave (launch/sbatch.py allocation_errors)."""
    # Divisors below 1 were already reported by their range check.
    if world < 1 or mini_batch_size < 1 or mini_batch_size % world == 0:
        return None
    return (
        f"algo.mini_batch_size={mini_batch_size} must be a multiple of {world_is}"
        " (every rank takes an equal share of each mini-batch)"
    )


def tp_error(tp: int, ranks: int, ranks_are: str) -> str | None:
    """The rollout.tp rule, checked before launch (`validate`) and again by every rank
    (rollout/vllm_engine.py): vLLM makes tensor-parallel groups of rollout.tp consecutive
    ranks, so `ranks` must be a multiple of it. `ranks_are` says which ranks are counted."""
    if tp >= 1 and ranks % tp == 0:
        return None
    return (
        f"rollout.tp={tp} must divide {ranks_are}: each tensor-parallel group is {tp}"
        " consecutive ranks; lower rollout.tp or start more ranks"
    )


def _tp_errors(cfg: Config, launcher: Launcher) -> list[str]:
    r, s = cfg.rollout, cfg.slurm
    if r.engine != "vllm" or r.tp < 1:  # hf has no TP; tp < 1 was reported by its range
        return []
    if launcher == "local":
        error = tp_error(r.tp, cfg.trainer.nprocs, f"trainer.nprocs={cfg.trainer.nprocs}")
    elif s.gpus_per_node > 0:  # else _slurm_job_errors says vLLM needs GPUs
        # A group must live inside one node; tasks per node equal GPUs per node (checked).
        where = f"slurm.gpus_per_node={s.gpus_per_node} (a group lives inside one node)"
        error = tp_error(r.tp, s.gpus_per_node, where)
    else:
        error = None
    return [error] if error else []


def run_name_errors(name: str | None) -> list[str]:
    """trainer.run_name names one folder directly under trainer.output_dir: nothing in it may
    lead outside that folder, hide the run, or break a log or #SBATCH line."""
    if name is None:
        return []
    if not name.strip():
        problem = "is empty"
    elif name.startswith(("/", "\\")):
        problem = "is an absolute path"
    elif "/" in name or "\\" in name:
        problem = "contains a path separator"
    elif name.startswith("."):
        problem = "starts with a dot (.. leaves trainer.output_dir; .x is hidden)"
    elif any(unicodedata.category(c) == "Cc" for c in name):
        problem = "contains a control character (newline, tab, ...)"
    else:
        return []
    return [
        f"trainer.run_name={name!r}: {problem}; it names one folder under trainer.output_dir:"
        " use a plain name such as exp1 (or null for <config stem>-<timestamp>)"
    ]
