"""The memory and checkpoint estimate against the one full-depth measurement it is calibrated
on (docs/PERFORMANCE.md, "GPU (2 x H200)": Qwen2.5-7B shape, PPO with critic and reference,
bfloat16, 2 ranks, TP=2, utilization 0.35, micro-batches of 4 rows, 143,771 MiB GPUs).

Run: python -m pytest tests/test_memory_plan.py -q
"""

from __future__ import annotations

from dataclasses import replace

import pytest
from helpers import CONFIGS, MEASURED_7B_TP2, write_model_config

from bench.rollout import QWEN7B
from hpc_ppo import memory_plan as mp
from hpc_ppo.config import load_config

H200 = 143771 * 2**20
GiB = mp.GiB


@pytest.fixture(scope="module")
def measured(tmp_path_factory):
    """(shape, workload) of the measured TP=2 run (bench/gpu_host/tp2.sh ppo)."""
    model = write_model_config(tmp_path_factory.mktemp("q7") / "model", QWEN7B)
    cfg = load_config(CONFIGS / "gpu-step.yaml", [f"model.path={model}", *MEASURED_7B_TP2])
    return mp.model_shape(cfg.model), mp.workload(cfg, 2)


def test_parameter_counts_of_the_7b_shape(measured):
    shape, _ = measured
    assert shape.params == 7_615_616_512  # Qwen2.5-7B's published count
    assert shape.critic_params == 7_070_622_721  # without the 152k x 3584 head, with a 1-output one
    assert (shape.layers, shape.kv_heads, shape.head_dim) == (28, 4, 128)


def test_rollout_phase_matches_the_measured_120_gib(measured):
    shape, w = measured
    plan = mp.plan_memory(shape, w, H200)
    assert plan.state / GiB == pytest.approx(61.8, abs=0.1)  # 28.4 + 26.3 + 7.1
    assert plan.engine / GiB == pytest.approx(49.1, abs=0.1)
    assert plan.rollout_peak / GiB == pytest.approx(120.4, abs=1.0)  # measured after generation


def test_vllm_split_matches_what_vllm_reported(measured):
    shape, w = measured
    plan = mp.plan_memory(shape, w, H200)
    assert plan.vllm_weights / GiB == pytest.approx(7.16, abs=0.1)
    assert plan.kv_cache / GiB == pytest.approx(40.58, abs=0.5)


def test_update_fits_the_measured_run_and_counts_bf16_logits(measured):
    """The 4-row run fitted. Its 16-row first try ran out of memory while log-probs kept
    float32 copies of the logits; the chunked implementation keeps two bf16 tensors (the
    logits and their gradient) and ~1 GiB of chunks, so 16 rows are now predicted to fit (to
    be measured on a GPU)."""
    shape, w = measured
    assert w.rows == 4
    assert mp.plan_memory(shape, w, H200).update_peak < H200  # 4 rows fitted
    first_try = replace(w, rows=16)  # trainer.micro_batch_size=16, 16,384-token budget
    plan = mp.plan_memory(shape, first_try, H200)
    assert plan.logits == 16 * 513 * 152_064 * 2 * 2 + 2**30
    assert plan.update_peak < H200


def test_checkpoint_size_matches_the_83_gb_on_disk(measured):
    shape, w = measured
    assert mp.checkpoint_bytes(shape, w) / GiB == pytest.approx(83, abs=1.5)


def test_fp32_state_is_twice_bf16_and_sharded_over_ranks(measured):
    shape, w = measured
    bf16 = mp.plan_memory(shape, w, H200)
    fp32 = mp.plan_memory(shape, replace(w, dtype="float32"), H200)
    eight = mp.plan_memory(shape, replace(w, world=8), H200)
    assert fp32.policy == 2 * bf16.policy and fp32.reference == bf16.reference
    assert eight.policy == bf16.policy // 4


def test_utilization_fixes_bracket_what_fits(measured):
    shape, w = measured
    plan = mp.plan_memory(shape, replace(w, utilization=0.9), H200)
    assert plan.rollout_peak > H200
    fit = mp.utilization_to_fit(plan)
    assert mp.plan_memory(shape, replace(w, utilization=fit), H200).rollout_peak <= H200
    assert mp.utilization_needed(plan, w) < fit
    world = mp.ranks_to_fit(shape, replace(w, utilization=0.9), H200, step=2)
    assert (
        mp.plan_memory(shape, replace(w, utilization=0.9, world=world), H200).rollout_peak <= H200
    )
    assert (
        mp.plan_memory(shape, replace(w, utilization=0.9, world=world - 2), H200).rollout_peak
        > H200
    )
    # vLLM's share and the overhead alone exceed the GPU: no number of ranks helps
    assert mp.ranks_to_fit(shape, replace(w, utilization=0.95), H200, step=2) is None


def test_kv_heads_are_replicated_when_tp_exceeds_them(measured):
    shape, w = measured
    four = mp.plan_memory(shape, replace(w, tp=4), H200).kv_per_token
    eight = mp.plan_memory(shape, replace(w, tp=8), H200).kv_per_token
    assert four == eight == 2 * shape.layers * 1 * shape.head_dim * 2


def test_workload_rows_follow_micro_batch_and_token_budget():
    cfg = load_config(CONFIGS / "tiny-cpu.yaml", ["trainer.micro_batch_size=64"])
    w = mp.workload(cfg, 1)
    assert w.rows == min(64, cfg.algo.mini_batch_size * cfg.rollout.n)
    budget = load_config(
        CONFIGS / "tiny-cpu.yaml", [f"trainer.max_tokens_per_micro_batch={3 * w.row_tokens}"]
    )
    assert mp.workload(budget, 1).rows == 3
    tight = load_config(CONFIGS / "tiny-cpu.yaml", ["trainer.max_tokens_per_micro_batch=1"])
    assert mp.workload(tight, 1).rows == 1  # a longer row still gets its own micro-batch
