"""`hpc-ppo run` end to end with rollout.engine=vllm on one GPU."""

from __future__ import annotations

import json
import math
from pathlib import Path

from helpers import CONFIGS, TINY, metrics, run_ok

GAP_TOL = 0.1  # mean |engine - FSDP| logprob per token; measured 0.009 (test_vllm_engine.py)


def run_cli(env: dict, *args: str, timeout: int) -> tuple[Path, list[dict]]:
    """`hpc-ppo run ARGS`, which must succeed; the run folder and its rows of step metrics."""
    run_dir = run_ok(*args, env=env, timeout=timeout)
    return run_dir, [r for r in metrics(run_dir) if "reward/mean" in r]


def test_three_ppo_steps_on_a_qwen05b_shape(model_dir, tmp_path, local_env, vllm_cache):
    run_dir, rows = run_cli(
        local_env,
        str(CONFIGS / "gpu-smoke-0.5b.yaml"),
        vllm_cache,
        f"model.path={model_dir}",
        f"trainer.output_dir={tmp_path}",
        "trainer.total_steps=3",
        timeout=420,
    )
    assert [r["step"] for r in rows] == [0, 1, 2]
    print(json.dumps(rows, indent=1))
    for r in rows:
        assert r["response/length_mean"] > 0
        assert math.isfinite(r["actor/pg_loss"]) and math.isfinite(r["critic/vf_loss"])
        assert r["actor/logprob_gap"] < GAP_TOL, r
        assert r["perf/gen_tokens_per_s"] > 0


def test_builtin_tiny_model_with_async_saves_and_token_budget(tmp_path, local_env, vllm_cache):
    """The CPU default (head_dim 16) through vLLM: the engine writes its config.json. Two
    steps with micro-batches packed by a token budget and async checkpoints of state that
    lives on the GPU (staged to CPU, written by DCP's thread on a gloo group of its own)."""
    run_dir, rows = run_cli(
        local_env,
        TINY,
        vllm_cache,
        "rollout.engine=vllm",
        "trainer.device=cuda",
        "rollout.enforce_eager=true",
        "rollout.gpu_memory_utilization=0.2",
        "trainer.total_steps=2",
        "trainer.save_every=1",
        "trainer.async_save=true",
        "trainer.max_tokens_per_micro_batch=512",
        f"trainer.output_dir={tmp_path}",
        timeout=300,
    )
    assert [r["step"] for r in rows] == [0, 1]
    assert (run_dir / "vllm-model" / "rank0" / "config.json").is_file()
    for r in rows:
        assert math.isfinite(r["actor/pg_loss"]) and math.isfinite(r["critic/vf_loss"]), r
        assert r["time/save"] > 0, r  # a save happened on every step (save_every=1)
    done = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
    assert done == ["step_1", "step_2"], done
    for name in done:
        assert (run_dir / "checkpoints" / name / "COMPLETE").is_file()
