"""The in-rank vLLM engine against the FSDP2 model it serves, on one GPU.

One run of tests/gpu/engine_checks.py (a rank bound to one GPU, SLURM_LOCALID=3) measures
everything; each test below asserts one property of what it recorded.

Tolerance: vLLM (bf16, its own kernels) and FSDP2 (bf16 compute, fp32 logits) never agree
bit for bit. Measured on an H100 (2026-11-24, docs/PERFORMANCE.md), 4,096 response tokens at
temperature 0.7: mean |difference| 0.014 (median 0.012, max 0.064) on the initial weights,
0.029 (median 0.024, max 0.16) after pushing perturbed ("trained") weights, and 1.15 when FSDP
holds the pre-update weights (what a push that silently failed looks like). MEAN_TOL = 0.1 is
3.5x the worst agreeing case and 11x below the stale one; the stale/pushed ratio was 40.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
MEAN_TOL = 0.1  # mean |logprob(vLLM) - logprob(FSDP)| per response token
MEDIAN_TOL = 0.1


@pytest.fixture(scope="module")
def checks(model_dir: Path, tmp_path_factory: pytest.TempPathFactory, bound_gpu_env) -> dict:
    work = tmp_path_factory.mktemp("engine")
    out = work / "checks.json"
    proc = subprocess.run(
        [sys.executable, str(HERE / "engine_checks.py"), str(model_dir), str(work), str(out)],
        env=bound_gpu_env(3),
        capture_output=True,
        text=True,
        timeout=480,
    )
    log = proc.stdout + proc.stderr
    (work / "log").write_text(log)
    data = json.loads(out.read_text()) if out.is_file() else {}
    print(json.dumps({k: v for k, v in data.items() if k != "init"}, indent=1))  # -s shows it
    data["_tail"] = f"exit {proc.returncode}; log {work / 'log'}:\n{log[-4000:]}"
    return data


def section(checks: dict, name: str) -> dict:
    got = checks.get(name)
    assert got is not None, f"engine_checks recorded no {name!r}\n{checks['_tail']}"
    assert got.get("ok"), got.get("error", "") + checks["_tail"]
    return got


def test_rank_bound_to_one_gpu_runs_vllm_on_cuda0(checks):
    first = section(checks, "first_cycle")  # vLLM generated on this device
    assert first["format"]["samples"] > 0
    assert checks["rank_env"]["source"] == "slurm"
    assert checks["rank_env"]["local_rank"] == 0  # SLURM_LOCALID=3, one visible GPU
    assert checks["device"]["device"] == "cuda:0"
    assert checks["device"]["current_device"] == 0


def test_samples_follow_the_contract(checks):
    f = section(checks, "first_cycle")["format"]
    assert f["samples"] == 32 * 2
    assert f["grouped"] and f["prompt_ids_kept"] and f["logprob_lengths_match"]
    assert f["finished_end_with_eos"] and f["no_eos_inside"] and f["unfinished_full_length"]
    assert f["logprobs_nonpositive"]


def test_per_request_seeds_make_generation_reproducible(checks):
    first = section(checks, "first_cycle")
    assert first["same_seed_same_tokens"] >= 0.9  # fraction of samples identical
    assert first["other_seed_other_tokens"]


def test_logprobs_match_fsdp_before_and_after_pushing_trained_weights(checks):
    for name in ("first_cycle", "pushed_perturbed"):
        g = section(checks, name)["gap"]
        assert g["tokens"] > 1000, g
        assert g["mean"] < MEAN_TOL and g["median"] < MEDIAN_TOL, (name, g)
    pushed = section(checks, "pushed_perturbed")
    stale = pushed["gap_vs_stale_weights"]
    # The pushed weights really are the trained ones: the old weights explain vLLM far worse.
    assert stale["mean"] > 10 * pushed["gap"]["mean"], (stale, pushed["gap"])
    assert pushed["slept_gib"] > 1  # level-2 sleep gave back the weights and the KV cache


def test_wake_refused_when_training_holds_the_memory(checks):
    r = section(checks, "wake_refused")
    assert r["raised"], r
    assert "rollout.gpu_memory_utilization" in r["message"] and "GiB" in r["message"]
    assert r["generates_after"]  # the engine recovers once the memory is back


def test_start_refused_when_utilization_exceeds_free_memory(checks):
    r = section(checks, "start_refused")
    assert r["raised"], r
    assert "rollout.gpu_memory_utilization=0.95" in r["message"]
    assert "lower rollout.gpu_memory_utilization" in r["message"]


def test_tp_larger_than_ranks_refused(checks):
    r = section(checks, "tp_refused")
    assert r["config_raised"] and "rollout.tp=2" in r["config_message"], r
    assert r["engine_raised"] and "rollout.tp=2" in r["engine_message"], r


def test_caches_live_under_the_output_dir(checks):
    caches = checks["init"]["caches"]
    assert set(caches) == {
        "VLLM_CACHE_ROOT",
        "FLASHINFER_WORKSPACE_BASE",
        "TRITON_CACHE_DIR",
        "TORCHINDUCTOR_CACHE_DIR",
    }
    for path in caches.values():  # <trainer.output_dir>/.cache, beside the run folders
        assert Path(path).parent == Path(checks["init"]["output_dir"]) / ".cache", caches
    assert checks.get("done"), checks["_tail"]
