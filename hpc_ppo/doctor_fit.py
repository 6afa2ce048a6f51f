"""`hpc-ppo doctor`'s checks that a config fits: GPU memory while vLLM generates and while the
actor updates, vLLM's KV cache, and checkpoints on trainer.output_dir's file system.

    hpc-ppo doctor configs/qwen2-7b.yaml model.path=/models/Qwen2-7B-Instruct --launcher slurm

The numbers come from memory_plan.py (an estimate; its docstring says what it counts and how
it was calibrated); this module compares them with the GPU and disk at hand and says what to
change when they do not fit.
"""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

from hpc_ppo import memory_plan as mp
from hpc_ppo.config import BUILTIN_TINY_MODEL, Config, Launcher, world_size_for
from hpc_ppo.doctor_env import existing_base
from hpc_ppo.doctor_node import Check, GiB, count_text, needs_cuda, size_text


def fit_checks(cfg: Config, launcher: Launcher, gpus: list[tuple[str, int]]) -> list[Check]:
    """Checkpoint size against trainer.output_dir's free space, then the GPU memory estimate
    (memory_plan.py) on the smallest GPU this task sees."""
    path = cfg.model.path
    if path != BUILTIN_TINY_MODEL and not (Path(path) / "config.json").is_file():
        return [
            Check(
                "memory",
                "warning",
                f"model.path={path} holds no config.json on this node: no memory or checkpoint"
                " estimate; run doctor where model.path is readable",
            )
        ]
    try:
        shape = mp.model_shape(cfg.model)
    except Exception as e:  # an architecture transformers does not know, a broken config.json
        first = (str(e).splitlines() or [type(e).__name__])[0]
        return [
            Check(
                "memory",
                "warning",
                f"cannot build model.path={cfg.model.path}'s architecture on the meta device"
                f" ({first}): no estimate; check that this transformers knows it",
            )
        ]
    w = mp.workload(cfg, world_size_for(cfg, launcher))
    checks = [check_checkpoint_space(cfg, shape, w)]
    counts = f"{count_text(shape.params)} parameters" + (
        f", critic {count_text(shape.critic_params)}" if w.critic else ""
    )
    if needs_cuda(cfg) is None and not (cfg.trainer.device == "auto" and gpus):
        state = mp.plan_memory(shape, w, 0).state
        return [
            *checks,
            Check(
                "memory",
                "ok",
                f"CPU run: {counts}; training state {size_text(state)} per rank in host memory",
            ),
        ]
    if not gpus:
        return [
            *checks,
            Check(
                "memory",
                "warning",
                f"{counts}; no GPU here to size against: run doctor on the job's GPU node (srun)"
                f" for the estimate",
            ),
        ]
    total = min(t for _, t in gpus)
    plan = mp.plan_memory(shape, w, total)
    checks.append(check_rollout_memory(cfg, launcher, shape, w, plan, counts))
    if w.vllm:
        checks.append(check_vllm_share(cfg, w, plan))
    checks.append(check_update_memory(shape, w, plan))
    return checks


def check_rollout_memory(
    cfg: Config,
    launcher: Launcher,
    shape: mp.ModelShape,
    w: mp.Workload,
    plan: mp.MemoryPlan,
    counts: str,
) -> Check:
    parts = f"policy {gib(plan.policy)}" + (f", critic {gib(plan.critic)}" if w.critic else "")
    parts += f", reference {gib(plan.reference)}" if w.reference else ""
    text = (
        f"estimate per GPU while generating: {gib(plan.rollout_peak)} of {gib(plan.total)} ="
        f" training state {gib(plan.state)} ({counts}; {parts}; model.dtype={w.dtype} over"
        f" {w.world} rank(s)) + {_engine(w, plan.engine)} + ~{gib(plan.overhead)} overhead"
        " (CUDA, NCCL)"
    )
    if plan.rollout_peak <= plan.total:
        return Check("memory", "ok", text)
    fixes = []
    fit, need = mp.utilization_to_fit(plan), mp.utilization_needed(plan, w)
    if w.vllm and fit >= need:
        fixes.append(f"lower rollout.gpu_memory_utilization to {fit}")
    if w.dtype == "float32":
        bf16 = mp.plan_memory(shape, replace(w, dtype="bfloat16"), plan.total)
        if bf16.rollout_peak <= plan.total:
            fixes.append(f"set model.dtype=bfloat16 (training state {gib(bf16.state)})")
    step = cfg.slurm.ntasks_per_node if launcher == "slurm" else 1
    world = mp.ranks_to_fit(shape, w, plan.total, step)
    if world is not None and launcher == "slurm":
        fixes.append(f"use slurm.nodes={world // step} ({world} ranks)")
    elif world is not None:
        fixes.append(f"run {world} ranks (trainer.nprocs={world}, one GPU each)")
    hint = (
        "; or ".join(fixes)
        if fixes
        else "this model does not fit these GPUs at any of those settings"
    )
    return Check("memory", "error", f"{text}: does not fit: {hint}")


def check_vllm_share(cfg: Config, w: mp.Workload, plan: mp.MemoryPlan) -> Check:
    seq = mp.sequence_kv_bytes(plan, w)
    tokens = plan.kv_cache // plan.kv_per_token
    kv_from = "rollout.kv_cache_memory_bytes" if w.kv_cache_bytes is not None else "the rest"
    text = (
        f"vLLM's share {gib(plan.engine)}: weights {gib(plan.vllm_weights)} (bf16,"
        f" rollout.tp={w.tp}) + ~{gib(mp.VLLM_RUNTIME)} runtime + KV cache {gib(plan.kv_cache)}"
        f" ({kv_from}: {tokens:,} tokens)"
    )
    if plan.kv_cache < seq:
        fix = f"raise rollout.gpu_memory_utilization to {mp.utilization_needed(plan, w)} or rollout.tp"
        if w.kv_cache_bytes is not None:
            fix = f"raise rollout.kv_cache_memory_bytes to {seq} or more"
        return Check(
            "memory",
            "error",
            f"{text}: less than one sequence of data.max_prompt_tokens + rollout.max_new_tokens ="
            f" {w.row_tokens:,} tokens ({gib(seq)}), and vLLM refuses to start: {fix}",
        )
    group = cfg.trainer.batch_size * cfg.rollout.n * w.tp // w.world
    return Check(
        "memory",
        "ok",
        f"{text}: {tokens // w.row_tokens:,} full-length sequences at once; a TP group generates"
        f" {group:,} a step",
    )


def check_update_memory(shape: mp.ModelShape, w: mp.Workload, plan: mp.MemoryPlan) -> Check:
    positions = w.rows * (w.response_tokens + 1)
    text = (
        f"estimate per GPU while the actor updates: {gib(plan.update_peak)} of {gib(plan.total)}"
        f" = training state {gib(plan.state)} + ~{gib(plan.overhead)} overhead + activations"
        f" {gib(plan.activations)} ({w.rows} row(s) x {w.row_tokens:,} tokens,"
        f" model.gradient_checkpointing={str(w.checkpointing).lower()}) + gathered layers"
        f" {gib(plan.gathered)} + logits {gib(plan.logits)} (bf16 and their gradient over"
        f" {positions:,} positions x {shape.vocab:,}, float32 chunks)"
        + (f" + {_engine(w, plan.engine_in_update)}" if plan.engine_in_update else "")
    )
    if plan.update_peak <= plan.total:
        return Check("memory", "ok", text)
    rows = mp.rows_to_fit(shape, w, plan.total)
    fixes = []
    if rows:
        fixes.append(
            f"trainer.micro_batch_size={rows} or trainer.max_tokens_per_micro_batch={rows * w.row_tokens}"
        )
    if not w.checkpointing:
        fixes.append("model.gradient_checkpointing=true")
    if plan.engine_in_update and w.vllm:
        fixes.append("rollout.free_cache_engine=true")
    if not fixes:
        fixes.append("shorter rollout.max_new_tokens or data.max_prompt_tokens, or more ranks")
    return Check("memory", "warning", f"{text}: likely out of memory: {'; or '.join(fixes)}")


def check_checkpoint_space(cfg: Config, shape: mp.ModelShape, w: mp.Workload) -> Check:
    """A run keeps trainer.keep_checkpoints complete checkpoints and writes the next beside
    them before it prunes the oldest (checkpoint.py), so keep + 1 must fit."""
    size, keep = mp.checkpoint_bytes(shape, w), cfg.trainer.keep_checkpoints
    out = cfg.trainer.output_dir
    try:
        free = shutil.disk_usage(existing_base(Path(out))).free
    except OSError as e:
        return Check(
            "checkpoint",
            "warning",
            f"trainer.output_dir={out}: cannot read its free space ({e.strerror})",
        )
    what = "policy + critic" if w.critic else "policy"
    text = (
        f"estimate {size_text(size)} a checkpoint ({what} + AdamW states, model.dtype={w.dtype});"
        f" trainer.output_dir={out} has {size_text(free)} free, for {free // size:,} of them"
    )
    fix = "free space there, or set trainer.output_dir to a larger file system"
    if free < size:
        return Check("checkpoint", "error", f"{text}: not even one fits: {fix}")
    if free < (keep + 1) * size:
        return Check(
            "checkpoint",
            "warning",
            f"{text}, but a run holds trainer.keep_checkpoints={keep} plus the one it writes"
            f" ({keep + 1}): {fix}"
            + ("" if keep == 2 else ", or lower trainer.keep_checkpoints (>= 2)"),
        )
    return Check("checkpoint", "ok", text)


def _engine(w: mp.Workload, n: int) -> str:
    if not w.vllm:
        return f"the HF engine's copy {gib(n)} (rollout.engine=hf, model.dtype={w.dtype})"
    awake = "" if w.sleeps else ", rollout.free_cache_engine=false: awake while training"
    return f"vLLM {gib(n)} (rollout.gpu_memory_utilization={w.utilization}{awake})"


def gib(n: int) -> str:
    return f"{n / GiB:.1f} GiB"
