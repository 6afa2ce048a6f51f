"""One typed config tree for an hpc-ppo job: YAML file + dotted `key=value` overrides.

    hpc-ppo validate configs/tiny-cpu.yaml actor.lr=1e-4 rollout.n=8

Every field carries its own check (choices, range); cross-field rules live in
`_check_cross_fields`. All errors are collected and reported together, each naming the key,
the value and the fix, before anything is started or submitted.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from hpc_ppo.atomic import atomic_write_text
from hpc_ppo.errors import ConfigError

BUILTIN_TINY_MODEL = "builtin:tiny-qwen2"
# Keys a resumed run may change: how it is launched, not what it computes.
RESUMABLE_KEYS = (
    "trainer.nprocs",
    "trainer.threads_per_rank",
    "trainer.total_steps",
    "tracking.uri",
)


def _spec(
    default: Any = dataclasses.MISSING,
    *,
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    lt: float | None = None,
    choices: tuple[Any, ...] | None = None,
    factory: Any = dataclasses.MISSING,
    doc: str = "",
) -> Any:
    """A dataclass field with validation metadata (bounds, choices) and a one-line doc."""
    meta = {"ge": ge, "gt": gt, "le": le, "lt": lt, "choices": choices, "doc": doc}
    if factory is not dataclasses.MISSING:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class TinyModelConfig:
    """Shape of the built-in Qwen2-architecture model created from a config (no download)."""

    hidden_size: int = _spec(64, ge=8, doc="hidden width")
    num_hidden_layers: int = _spec(2, ge=1, doc="transformer layers")
    num_attention_heads: int = _spec(4, ge=1, doc="attention heads")
    num_key_value_heads: int = _spec(2, ge=1, doc="KV heads (GQA)")
    intermediate_size: int = _spec(128, ge=8, doc="MLP width")


@dataclass
class ModelConfig:
    path: str = _spec(BUILTIN_TINY_MODEL, doc="HF model directory, or builtin:tiny-qwen2")
    critic_path: str | None = _spec(None, doc="critic init directory (default: model.path)")
    tiny: TinyModelConfig = _spec(factory=TinyModelConfig, doc="shape of builtin:tiny-qwen2")
    dtype: str = _spec("float32", choices=("float32", "bfloat16"), doc="parameter dtype")
    attn_implementation: str = _spec(
        "auto",
        choices=("auto", "sdpa", "eager", "flash_attention_2"),
        doc="auto: flash_attention_2 if flash-attn is installed (GPU), else sdpa",
    )
    gradient_checkpointing: bool = _spec(False, doc="recompute activations in backward")


@dataclass
class SyntheticDataConfig:
    task: str = _spec("letters", choices=("letters",), doc="synthetic prompt task")
    num_prompts: int = _spec(4096, ge=1, doc="prompts generated")
    min_len: int = _spec(3, ge=1, doc="shortest letter string")
    max_len: int = _spec(6, ge=1, doc="longest letter string")


@dataclass
class DataConfig:
    path: str | None = _spec(None, doc=".jsonl or .parquet prompts; null = synthetic task")
    prompt_key: str = _spec("prompt", doc="field holding the prompt text")
    answer_key: str | None = _spec("answer", doc="field holding the ground truth (or null)")
    max_prompt_tokens: int = _spec(256, ge=1, doc="longer prompts are cut from the left")
    chat_template: bool = _spec(False, doc="wrap prompts with the tokenizer's chat template")
    shuffle: bool = _spec(True, doc="reshuffle prompts every epoch")
    synthetic: SyntheticDataConfig = _spec(factory=SyntheticDataConfig)


@dataclass
class RewardConfig:
    fn: str = _spec("letters", doc="builtin name or 'pkg.module:function'")


@dataclass
class RolloutConfig:
    engine: str = _spec("hf", choices=("hf", "vllm"), doc="hf: transformers generate (CPU)")
    n: int = _spec(4, ge=1, le=1024, doc="samples per prompt")
    temperature: float = _spec(1.0, gt=0.0, le=10.0, doc="sampling temperature")
    top_p: float = _spec(1.0, gt=0.0, le=1.0, doc="nucleus sampling")
    max_new_tokens: int = _spec(16, ge=1, doc="response length cap")
    chunks: int = _spec(
        1, ge=1, doc="generate in this many calls; stop requests are checked between"
    )
    tp: int = _spec(1, ge=1, doc="tensor-parallel size of the vLLM engine")
    gpu_memory_utilization: float = _spec(
        0.5, gt=0.0, lt=1.0, doc="vLLM: share of GPU memory for weights + KV cache"
    )
    enforce_eager: bool = _spec(False, doc="vLLM: disable CUDA graphs")
    free_cache_engine: bool = _spec(True, doc="vLLM: sleep during training")
    kv_cache_memory_bytes: int | None = _spec(
        None, ge=1, doc="vLLM: KV cache size in bytes (null: what gpu_memory_utilization leaves)"
    )
    max_num_seqs: int | None = _spec(None, ge=1, doc="vLLM: sequences per step (null: its default)")
    max_num_batched_tokens: int | None = _spec(
        None, ge=1, doc="vLLM: tokens per step (null: its default)"
    )
    enable_prefix_caching: bool | None = _spec(
        None, doc="vLLM: reuse shared-prefix KV (null: default)"
    )
    enable_chunked_prefill: bool | None = _spec(None, doc="vLLM: chunked prefill (null: default)")
    cache_dir: str | None = _spec(
        None, doc="vLLM/FlashInfer/Triton/inductor caches; null: <trainer.output_dir>/.cache"
    )


@dataclass
class OptimConfig:
    lr: float = _spec(1e-6, gt=0.0, lt=1.0, doc="AdamW learning rate")
    weight_decay: float = _spec(0.0, ge=0.0, doc="AdamW weight decay")
    betas: tuple[float, float] = _spec((0.9, 0.999), doc="AdamW betas")
    warmup_steps: int = _spec(0, ge=0, doc="linear LR warmup, then constant")
    grad_clip: float = _spec(1.0, gt=0.0, doc="max gradient norm")


@dataclass
class AlgoConfig:
    name: str = _spec("ppo", choices=("ppo", "grpo"), doc="ppo uses a critic + GAE")
    gamma: float = _spec(1.0, ge=0.0, le=1.0, doc="GAE discount")
    lam: float = _spec(0.95, ge=0.0, le=1.0, doc="GAE lambda")
    clip_ratio: float = _spec(0.2, gt=0.0, lt=1.0, doc="PPO ratio clip")
    value_clip: float | None = _spec(0.5, gt=0.0, doc="null disables value clipping")
    vf_coef: float = _spec(1.0, ge=0.0, doc="scales the critic loss")
    kl_coef: float = _spec(0.0, ge=0.0, doc="0 disables the reference model")
    kl_mode: str = _spec("reward", choices=("reward", "loss"), doc="where the KL enters")
    kl_estimator: str = _spec("k1", choices=("k1", "k2", "k3"))
    entropy_coef: float = _spec(0.0, ge=0.0, doc="entropy bonus")
    tis_cap: float | None = _spec(
        None, gt=0.0, doc="truncated importance weights min(pi_fsdp / pi_engine, cap); null: off"
    )
    loss_agg: str = _spec("token-mean", choices=("token-mean", "seq-mean"))
    whiten_advantages: bool = _spec(True, doc="normalise GAE advantages per batch")
    ppo_epochs: int = _spec(1, ge=1, le=100, doc="passes over each step's samples")
    mini_batch_size: int = _spec(8, ge=1, doc="prompts per optimizer step (global)")


@dataclass
class TrainerConfig:
    total_steps: int = _spec(50, ge=1, doc="training steps")
    batch_size: int = _spec(32, ge=1, doc="prompts per step, all ranks together")
    nprocs: int = _spec(1, ge=1, le=64, doc="local ranks for `hpc-ppo run`")
    seed: int = _spec(0, ge=0, doc="seeds data order, model init and sampling")
    device: str = _spec("auto", choices=("auto", "cpu", "cuda"))
    output_dir: str = _spec("runs", doc="run folders are created under it")
    run_name: str | None = _spec(None, doc="default: <config stem>-<timestamp>")
    micro_batch_size: int = _spec(64, ge=1, doc="rollouts per forward/backward pass per rank")
    max_tokens_per_micro_batch: int | None = _spec(
        None, ge=1, doc="dynamic batching: pack micro-batches up to this many padded tokens"
    )
    balance_tokens: bool = _spec(
        False, doc="move whole prompt groups between ranks to even out tokens"
    )
    save_every: int = _spec(0, ge=0, doc="checkpoint every N steps (0: only at the end / on stop)")
    keep_checkpoints: int = _spec(2, ge=2, doc="complete checkpoints kept")
    async_save: bool = _spec(False, doc="write periodic checkpoints in a background thread")
    threads_per_rank: int | None = _spec(
        None, ge=1, doc="torch CPU threads per rank (default: cores / ranks)"
    )


@dataclass
class TrackingConfig:
    uri: str | None = _spec(None, doc="MLflow tracking URI (default: sqlite in the run dir)")
    experiment: str = _spec("hpc-ppo", doc="MLflow experiment name")


@dataclass
class SlurmConfig:
    """How `hpc-ppo submit` / `render-sbatch` ask Slurm for resources (one task per GPU)."""

    nodes: int = _spec(1, ge=1, doc="nodes")
    gpus_per_node: int = _spec(0, ge=0, doc="GPUs per node; 0 for a CPU job")
    tasks_per_node: int | None = _spec(None, ge=1, doc="default: gpus_per_node (1 for CPU jobs)")
    gpu_binding: str = _spec("node", choices=("node", "task"), doc="task: --gpus-per-task=1")
    cpus_per_task: int = _spec(1, ge=1, doc="CPU cores per task")
    mem: str | None = _spec(None, doc="per node, e.g. 200G; null: cluster default")
    time: str = _spec("01:00:00", doc="wall-time limit, [D-]HH:MM:SS or minutes")
    partition: str | None = _spec(None, doc="null: the cluster default")
    account: str | None = _spec(None, doc="--account")
    qos: str | None = _spec(None, doc="--qos")
    constraint: str | None = _spec(None, doc="--constraint, e.g. h100")
    exclusive: bool = _spec(False, doc="--exclusive nodes")
    job_name: str | None = _spec(None, doc="default: the run name")
    signal_lead_s: int = _spec(180, ge=30, doc="USR2 this many seconds before the time limit")
    requeue: bool = _spec(True, doc="requeue on preemption / time limit")
    setup: list[str] = _spec(factory=list, doc="shell lines run before srun (module load ...)")
    extra_sbatch: list[str] = _spec(factory=list, doc="extra #SBATCH options, e.g. --reservation=x")

    @property
    def ntasks_per_node(self) -> int:
        return self.tasks_per_node or max(self.gpus_per_node, 1)

    @property
    def world_size(self) -> int:
        return self.nodes * self.ntasks_per_node


@dataclass
class Config:
    model: ModelConfig = _spec(factory=ModelConfig)
    data: DataConfig = _spec(factory=DataConfig)
    reward: RewardConfig = _spec(factory=RewardConfig)
    rollout: RolloutConfig = _spec(factory=RolloutConfig)
    actor: OptimConfig = _spec(factory=lambda: OptimConfig(lr=1e-6))
    critic: OptimConfig = _spec(factory=lambda: OptimConfig(lr=1e-5))
    algo: AlgoConfig = _spec(factory=AlgoConfig)
    trainer: TrainerConfig = _spec(factory=TrainerConfig)
    tracking: TrackingConfig = _spec(factory=TrackingConfig)
    slurm: SlurmConfig = _spec(factory=SlurmConfig)


# ---------------------------------------------------------------------------- loading


def load_config(
    path: str | Path | None, overrides: list[str] = (), *, check_paths: bool = True
) -> Config:
    """Read a YAML file, apply `a.b=value` overrides, build and validate the tree.

    check_paths=False skips the checks that model.path, model.critic_path and data.path exist
    on this machine (`hpc-ppo submit --dry-run` on a login node without the model).
    """
    raw: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file {p} not found")
        try:
            text = p.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise ConfigError(f"{p}: cannot read config file ({e})".replace("\n", " ")) from None
        try:
            raw = yaml.safe_load(text) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{p}: invalid YAML: {e}".replace("\n", " ")) from None
        if not isinstance(raw, dict):
            raise ConfigError(
                f"{p}: top level must be a mapping of sections, got {type(raw).__name__}"
            )
    errors: list[str] = []
    for item in overrides:
        _apply_override(raw, item, errors)
    cfg = _build(Config, raw, "", errors)
    if not errors:
        errors.extend(validate(cfg, check_paths=check_paths))
    if errors:
        raise ConfigError("\n".join(errors))
    return cfg


@dataclass(frozen=True)
class _Typed:
    """A number read from a command-line override, with the text as typed (YAML 1.1 reads
    12:00:00 as the integer 43200); a string field takes the text."""

    value: int | float
    text: str


def _apply_override(raw: dict, item: str, errors: list[str]) -> None:
    key, sep, text = item.partition("=")
    if not sep or not key:
        errors.append(f"override {item!r}: expected key=value, e.g. actor.lr=1e-6")
        return
    try:
        value = yaml.safe_load(text) if text != "" else ""
    except yaml.YAMLError:
        value = text
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = _Typed(value, text)  # a string field keeps what was typed: slurm.time=12:00:00
    node = raw
    parts = key.strip().split(".")
    for part in parts[:-1]:
        child = node.get(part)
        if child is None:  # absent, or an empty section in the YAML ("critic:" alone)
            child = node[part] = {}
        if not isinstance(child, dict):
            errors.append(f"{key}: {part} is a value, not a section")
            return
        node = child
    node[parts[-1]] = value


def _build(cls: type, raw: Any, prefix: str, errors: list[str], base: Any = None) -> Any:
    """Dataclass `cls` from a mapping, type-checking each field; unknown keys get a suggestion.

    Keys absent from `raw` keep `base`'s values: the parent's default for this section, which
    may differ from the class default (critic.lr=1e-5 vs OptimConfig.lr=1e-6).
    """
    base = cls() if base is None else base
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        errors.append(f"{prefix.rstrip('.')}: expected a section (mapping), got {raw!r}")
        return base
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs: dict[str, Any] = {}
    for key, value in raw.items():
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1, cutoff=0.5)
            hint = (
                f"did you mean {prefix}{close[0]}?" if close else f"valid keys: {', '.join(names)}"
            )
            errors.append(f"{prefix}{key}: unknown key; {hint}")
            continue
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            kwargs[key] = _build(tp, value, f"{prefix}{key}.", errors, getattr(base, key))
        else:
            typed = value
            if isinstance(value, _Typed):
                value, typed = value.value, value.text
            ok, converted = _coerce(value, tp)
            if not ok and typed is not value:
                ok, converted = _coerce(typed, tp)
            if ok:
                kwargs[key] = converted
            else:
                errors.append(f"{prefix}{key}={value!r}: expected {_type_name(tp)}")
    return dataclasses.replace(base, **kwargs)


def _coerce(value: Any, tp: Any) -> tuple[bool, Any]:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return True, None
        for arg in args:
            if arg is not type(None):
                ok, v = _coerce(value, arg)
                if ok:
                    return True, v
        return False, None
    if origin is list:
        (arg,) = typing.get_args(tp)
        if not isinstance(value, list):
            return False, None
        out = [_coerce(v, arg) for v in value]
        return all(ok for ok, _ in out), [v for _, v in out]
    if origin is tuple:
        args = typing.get_args(tp)
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            return False, None
        out = [_coerce(v, a) for v, a in zip(value, args, strict=False)]
        return all(ok for ok, _ in out), tuple(v for _, v in out)
    if tp is bool:
        return isinstance(value, bool), value
    if tp is int:
        return (isinstance(value, int) and not isinstance(value, bool)), value
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads "1e-6" as a string
            try:
                return True, float(value)
            except ValueError:
                return False, None
        return (isinstance(value, (int, float)) and not isinstance(value, bool)), float(
            value
        ) if isinstance(value, (int, float)) else None
    if tp is str:
        return isinstance(value, str), value
    return False, None


def _type_name(tp: Any) -> str:
    args = typing.get_args(tp)
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return " or ".join("null" if a is type(None) else _type_name(a) for a in args)
    if typing.get_origin(tp) is tuple:
        return f"a list of {len(args)} numbers"
    if typing.get_origin(tp) is list:
        return f"a list of {_type_name(args[0])}s"
    return {bool: "true/false", int: "an integer", float: "a number", str: "a string"}.get(
        tp, str(tp)
    )


# ---------------------------------------------------------------------------- validation


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


# ---------------------------------------------------------------------------- output


def to_dict(cfg: Config) -> dict[str, Any]:
    """Plain nested dict (tuples as lists) for YAML / MLflow params."""

    def conv(v: Any) -> Any:
        if isinstance(v, tuple):
            return list(v)
        if isinstance(v, dict):
            return {k: conv(x) for k, x in v.items()}
        return v

    return conv(dataclasses.asdict(cfg))


def dump_yaml(cfg: Config) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


def save_config(cfg: Config, path: Path) -> None:
    """Write the resolved config atomically (temp file, fsync, rename)."""
    atomic_write_text(path, dump_yaml(cfg))


def reference(obj: Any = None, prefix: str = "") -> list[tuple[str, str, str]]:
    """(key, default, doc) for every field: the README's configuration reference."""
    obj = Config() if obj is None else obj
    rows: list[tuple[str, str, str]] = []
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            rows.extend(reference(value, f"{prefix}{f.name}."))
            continue
        doc = f.metadata.get("doc", "")
        if f.metadata.get("choices"):
            doc = (
                (doc + "; " if doc else "") + "one of " + ", ".join(map(str, f.metadata["choices"]))
            )
        shown = yaml.safe_dump(
            list(value) if isinstance(value, tuple) else value, default_flow_style=True
        )
        rows.append((f"{prefix}{f.name}", shown.strip().removesuffix("...").strip(), doc))
    return rows


def reference_markdown() -> str:
    """The README's configuration table (tests keep the README equal to it).

    python -m hpc_ppo.config     # print it
    """
    rows = ["| key | default | meaning |", "|---|---|---|"]
    rows += [f"| `{key}` | `{default}` | {doc} |" for key, default, doc in reference()]
    return "\n".join(rows)


if __name__ == "__main__":
    print(reference_markdown())
