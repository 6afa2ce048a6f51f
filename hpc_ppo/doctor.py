"""`hpc-ppo doctor`: check a compute node, and whether a config can run on it, before a long job.

    hpc-ppo doctor                                               # this node only
    srun -N1 -n1 --gpus-per-node=8 hpc-ppo doctor configs/qwen2-7b.yaml \\
        model.path=/models/Qwen2-7B-Instruct data.path=/data/gsm8k/train.jsonl

One line per check: `ok`, `warning` or `error`, the facts, and for a warning or an error what
to change (the key or variable, and the value where one can be computed). Exit code 0 with
only ok and warnings, 2 with any error. The node's checks are in doctor_node.py (software,
GPUs), doctor_bytecode.py (compiled bytecode) and doctor_env.py (network, Slurm, rank,
folders); whether the config fits, in doctor_fit.py, from memory_plan.py's estimate; the
config's rules are the ones `hpc-ppo validate` applies (config/validate.py), for the launcher
the job will use.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from pathlib import Path

from hpc_ppo.config import BUILTIN_TINY_MODEL, Config, Launcher, load_config, world_size_for
from hpc_ppo.doctor_bytecode import check_bytecode
from hpc_ppo.doctor_env import (
    check_allreduce,
    check_folders,
    check_network_env,
    check_rank,
    check_slurm,
)
from hpc_ppo.doctor_fit import fit_checks
from hpc_ppo.doctor_node import (
    Check,
    check_driver,
    check_flash_attn,
    check_gpus,
    check_python,
    check_torch,
    check_vllm,
    needs_cuda,
    size_text,
    visible_gpus,
)
from hpc_ppo.errors import ConfigError


def default_launcher(environ: Mapping[str, str]) -> Launcher:
    """Inside a Slurm job the run is most likely a Slurm job too; elsewhere `hpc-ppo run`."""
    return "slurm" if environ.get("SLURM_JOB_ID") else "local"


def run_doctor(
    config: str | None,
    overrides: list[str],
    launcher: Launcher,
    environ: Mapping[str, str] | None = None,
) -> Iterator[Check]:
    """Every check, in report order; the config's only when a config or overrides are given
    (overrides alone apply to the embedded default)."""
    from hpc_ppo.provenance import code_version

    environ = os.environ if environ is None else environ
    cfg, config_checks = None, []
    if config is not None or overrides:
        cfg, config_checks = load_for_doctor(config, overrides, launcher)
    needs = needs_cuda(cfg)
    yield check_python()
    yield Check("hpc-ppo", "ok", code_version())
    yield check_torch(needs)
    yield check_driver(environ, needs)
    rank_check, rank = check_rank(environ)
    gpus = visible_gpus()
    yield from check_gpus(environ, gpus, rank, needs)
    if cfg is not None:
        yield from binding_checks(cfg, launcher, gpus, environ)
    yield check_vllm(environ, cfg.rollout if cfg else None)
    yield check_flash_attn(environ, cfg.model if cfg else None)
    yield check_bytecode()
    yield from check_network_env(environ, cfg.slurm.nodes if cfg and launcher == "slurm" else 1)
    yield check_allreduce(environ, cfg.rollout if cfg else None)
    yield check_slurm(environ)
    yield rank_check
    output_dir = cfg.trainer.output_dir if cfg else "runs"
    yield from check_folders(environ, output_dir, run_cache(cfg))
    yield from config_checks
    if cfg is not None:
        yield from check_model_dirs(cfg)
        yield from fit_checks(cfg, launcher, gpus)


def load_for_doctor(
    config: str | None, overrides: list[str], launcher: Launcher
) -> tuple[Config | None, list[Check]]:
    """The config checked as `hpc-ppo validate --launcher` does (every error a line), and a
    config to run the other checks with: the same one, or, when only rules failed, the tree
    as given (model and data paths unchecked, no world rules)."""
    where = config or "the embedded default config"
    try:
        cfg = load_config(config, overrides, launcher=launcher)
    except ConfigError as e:
        checks = [Check("config", "error", line) for line in str(e).splitlines()]
    else:
        world = world_size_for(cfg, launcher)
        ranks = (
            f"slurm.nodes={cfg.slurm.nodes} x {cfg.slurm.ntasks_per_node} tasks"
            if launcher == "slurm"
            else f"trainer.nprocs={world}"
        )
        text = f"{where}: valid for --launcher {launcher} ({world} rank(s): {ranks})"
        return cfg, [Check("config", "ok", text)]
    try:
        return load_config(config, overrides, check_paths=False), checks
    except ConfigError:
        skipped = "the checks that need a config were skipped: fix the errors above first"
        return None, [*checks, Check("config", "warning", skipped)]


def run_cache(cfg: Config | None) -> Path | None:
    """Where a vLLM run of `cfg` points its compile caches, derived as VLLMEngine does (it
    passes its run folder's parent, trainer.output_dir)."""
    if cfg is None or cfg.rollout.engine != "vllm":
        return None
    from hpc_ppo.rollout.vllm_engine import cache_root

    return cache_root(cfg.rollout, Path(cfg.trainer.output_dir).resolve())


def binding_checks(
    cfg: Config, launcher: Launcher, gpus: list[tuple[str, int]], environ: Mapping[str, str]
) -> list[Check]:
    """Whether this task sees the GPUs the job's ranks will need, and whether a node has
    enough of them for one tensor-parallel group."""
    if needs_cuda(cfg) is None or not gpus:
        return []
    s, r, checks = cfg.slurm, cfg.rollout, []
    on_node = environ.get("SLURM_GPUS_ON_NODE", "")
    node_gpus = int(on_node) if on_node.isdigit() else len(gpus)
    if launcher == "slurm" and s.gpus_per_node > 0:
        want = 1 if s.gpu_binding == "task" else s.gpus_per_node
        why = f"slurm.gpus_per_node={s.gpus_per_node} with slurm.gpu_binding={s.gpu_binding}"
        if len(gpus) < want:
            checks.append(
                Check(
                    "binding",
                    "warning",
                    f"{why}: each task must see {want} GPU(s), this one sees {len(gpus)}: if the"
                    " job's tasks are bound like this one, set slurm.gpu_binding=task; if only"
                    f" this doctor step is narrow, run it with srun --gpus-per-node={want}",
                )
            )
        else:
            checks.append(Check("binding", "ok", f"{why}: this task sees {len(gpus)}"))
    elif launcher == "local" and len(gpus) < cfg.trainer.nprocs:
        checks.append(
            Check(
                "binding",
                "error",
                f"trainer.nprocs={cfg.trainer.nprocs} ranks need a GPU each, this machine shows"
                f" {len(gpus)} (CUDA_VISIBLE_DEVICES={environ.get('CUDA_VISIBLE_DEVICES')!r}):"
                f" lower trainer.nprocs to {len(gpus)}, or make more GPUs visible",
            )
        )
    if r.engine == "vllm" and r.tp > node_gpus:
        checks.append(
            Check(
                "binding",
                "error",
                f"rollout.tp={r.tp}: a tensor-parallel group lives on one node, and this node"
                f" has {node_gpus} GPU(s): set rollout.tp to at most {node_gpus}, or run on"
                " nodes with more GPUs",
            )
        )
    return checks


def check_model_dirs(cfg: Config) -> list[Check]:
    """model.path (and model.critic_path) hold what the ranks load: config.json (the config
    check says when it is missing), a tokenizer (model.path) and weights (FSDP reads them;
    vLLM needs only config.json)."""
    mc, checks = cfg.model, []
    if mc.path == BUILTIN_TINY_MODEL:
        checks.append(Check("model", "ok", f"model.path={mc.path}: built in code, nothing to read"))
    for key, path in (("model.path", mc.path), ("model.critic_path", mc.critic_path)):
        folder = Path(path) if path and path != BUILTIN_TINY_MODEL else None
        if folder is None or not (folder / "config.json").is_file():
            continue
        weights = [*folder.glob("*.safetensors"), *folder.glob("pytorch_model*.bin")]
        found, missing = ["config.json"], []
        if key == "model.path":  # the critic uses the policy's tokenizer
            names = ("tokenizer.json", "tokenizer_config.json")
            if any((folder / n).is_file() for n in names):
                found.append("tokenizer")
            else:
                missing.append(f"no tokenizer ({' / '.join(names)})")
        if weights:
            size = size_text(sum(f.stat().st_size for f in weights))
            found.append(f"{len(weights)} weight file(s), {size}")
        else:
            missing.append("no weights (*.safetensors, pytorch_model*.bin)")
        if missing:
            text = f"{key}={path} has {', '.join(found)} but {' and '.join(missing)}"
            fix = "copy the model's complete Hugging Face folder there"
            checks.append(Check("model", "error", f"{text}: {fix}"))
        else:
            checks.append(Check("model", "ok", f"{key}={path}: {', '.join(found)}"))
    return checks


def summary(checks: list[Check]) -> str:
    counts = {s: sum(c.status == s for c in checks) for s in ("ok", "warning", "error")}
    return f"doctor: {counts['ok']} ok, {counts['warning']} warning(s), {counts['error']} error(s)"


def format_check(c: Check) -> str:
    return f"{c.status:<7}  {c.name:<12}  {c.message}"


def exit_code(checks: list[Check]) -> int:
    """2 (the CLI's code for input that cannot run) when any check failed, else 0."""
    return 2 if any(c.status == "error" for c in checks) else 0
