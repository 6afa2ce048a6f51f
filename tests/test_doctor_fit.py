"""Does a config fit this node: the doctor's memory and checkpoint lines, on GPUs given as
(name, bytes) and free space faked through shutil.disk_usage. Model folders hold a config.json
of the real shape (and the tiny tokenizer): nothing is downloaded or loaded.

Run: python -m pytest tests/test_doctor_fit.py -q
"""

from __future__ import annotations

import re
import shutil
from collections import namedtuple
from dataclasses import replace

import pytest
from helpers import CONFIGS, MEASURED_7B_TP2, TINY, write_model_config

from bench.rollout import QWEN7B
from hpc_ppo import memory_plan as mp
from hpc_ppo.config import load_config
from hpc_ppo.doctor_fit import check_checkpoint_space, fit_checks

GiB = 1024**3
RTX_24GB = [("NVIDIA GeForce RTX 4090", 24 * GiB)]
H100 = [("NVIDIA H100 80GB HBM3", 81_559 * 2**20)] * 8
H200 = [("NVIDIA H200", 143_771 * 2**20)] * 2


@pytest.fixture(scope="module")
def qwen7b(tmp_path_factory):
    """`qwen7b(*overrides)`: configs/qwen2-7b.yaml on a Qwen2.5-7B-shaped folder (config.json,
    tokenizer, empty weights), synthetic prompts, runs under a temporary folder."""
    root = tmp_path_factory.mktemp("q7")
    model = write_model_config(root / "model", QWEN7B, tokenizer=True)

    def _load(*overrides: str):
        base = [f"model.path={model}", "data.path=null", f"trainer.output_dir={root / 'runs'}"]
        return load_config(CONFIGS / "qwen2-7b.yaml", [*base, *overrides], launcher="slurm")

    return _load


def memory_lines(checks):
    return [c for c in checks if c.name == "memory"]


def test_qwen2_7b_does_not_fit_one_24gb_gpu(qwen7b):
    rollout, vllm, update = memory_lines(fit_checks(qwen7b(), "slurm", RTX_24GB))
    assert rollout.status == "error"
    assert rollout.message.startswith("estimate per GPU while generating: 49.4 GiB of 24.0 GiB")
    assert "training state 27.4 GiB" in rollout.message  # fp32: 16 bytes x 14.7 B / 8 ranks
    assert "rollout.gpu_memory_utilization=0.5" in rollout.message
    # lowering the utilization or bf16 cannot help on 24 GiB: only more nodes
    assert rollout.message.endswith("does not fit: use slurm.nodes=14 (112 ranks)")
    assert vllm.status == "ok"
    assert update.status == "warning" and "likely out of memory" in update.message


def test_qwen2_7b_fits_8_h100s(qwen7b):
    lines = memory_lines(fit_checks(qwen7b(), "slurm", H100))
    assert [c.status for c in lines] == ["ok", "ok", "ok"], lines


def test_lowering_the_utilization_is_the_fix_when_it_fits(qwen7b):
    cfg = qwen7b("rollout.gpu_memory_utilization=0.6")
    rollout = memory_lines(fit_checks(cfg, "slurm", H100))[0]
    assert rollout.status == "error"
    value = float(
        re.search(r"lower rollout.gpu_memory_utilization to ([\d.]+)", rollout.message)[1]
    )
    fixed = qwen7b(f"rollout.gpu_memory_utilization={value}")
    assert memory_lines(fit_checks(fixed, "slurm", H100))[0].status == "ok"


def test_a_share_smaller_than_vllms_weights(qwen7b):
    vllm = memory_lines(fit_checks(qwen7b("rollout.gpu_memory_utilization=0.05"), "slurm", H100))[1]
    assert vllm.status == "error"
    assert "less than one sequence" in vllm.message and "vLLM refuses to start" in vllm.message
    needed = float(re.search(r"raise rollout.gpu_memory_utilization to ([\d.]+)", vllm.message)[1])
    assert (
        memory_lines(fit_checks(qwen7b(f"rollout.gpu_memory_utilization={needed}"), "slurm", H100))[
            1
        ].status
        == "ok"
    )


def test_update_warning_names_the_micro_batch_that_fits(tmp_path):
    """The measured 2 x H200 run with 32-row micro-batches and no activation checkpointing
    (the 16 rows that ran out of memory there are predicted to fit now that log-probs keep no
    float32 logits: tests/test_memory_plan.py)."""
    model = write_model_config(tmp_path / "model", QWEN7B)
    wide = [
        "trainer.micro_batch_size=32",
        "trainer.max_tokens_per_micro_batch=65536",
        "model.gradient_checkpointing=false",
    ]
    overrides = [f"model.path={model}", *MEASURED_7B_TP2, *wide]
    cfg = load_config(CONFIGS / "gpu-step.yaml", overrides)
    rollout, _, update = memory_lines(fit_checks(cfg, "local", H200))
    assert rollout.status == "ok" and "120.9 GiB of 140.4 GiB" in rollout.message
    assert update.status == "warning"
    rows = int(re.search(r"trainer.micro_batch_size=(\d+)", update.message)[1])
    assert 1 <= rows < 32


def test_cpu_run_and_no_gpu_here(qwen7b):
    tiny = fit_checks(load_config(TINY), "local", [])
    assert [c.name for c in tiny] == ["checkpoint", "memory"]
    assert tiny[1].status == "ok" and tiny[1].message.startswith("CPU run:")
    (unsized,) = memory_lines(fit_checks(qwen7b(), "slurm", []))
    assert unsized.status == "warning" and "run doctor on the job's GPU node" in unsized.message


def test_no_estimate_without_a_local_config_json(tmp_path):
    cfg = load_config(TINY, ["model.path=Qwen/Qwen2-7B-Instruct"], check_paths=False)
    (check,) = fit_checks(cfg, "local", RTX_24GB)  # a Hub name: nothing is downloaded
    assert check.status == "warning" and "holds no config.json on this node" in check.message


def test_an_architecture_transformers_does_not_know(tmp_path):
    model = write_model_config(tmp_path / "model", {"hidden_size": 8})
    (model / "config.json").write_text('{"model_type": "no-such-arch"}')
    cfg = load_config(TINY, [f"model.path={model}"], check_paths=False)
    (check,) = fit_checks(cfg, "local", [])
    assert check.status == "warning" and "no estimate" in check.message


@pytest.mark.parametrize(
    ("free_checkpoints", "status"), [(0.5, "error"), (2.5, "warning"), (3.5, "ok")]
)
def test_checkpoint_space_against_keep_plus_one(qwen7b, monkeypatch, free_checkpoints, status):
    cfg = qwen7b("model.dtype=bfloat16")
    shape = mp.model_shape(cfg.model)
    w = mp.workload(cfg, 8)
    size = mp.checkpoint_bytes(shape, w)
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(0, 0, int(free_checkpoints * size)))
    check = check_checkpoint_space(cfg, shape, w)
    assert check.status == status, check
    assert check.message.startswith("estimate 82.1 GiB a checkpoint (policy + critic + AdamW")
    if status != "ok":
        assert "set trainer.output_dir to a larger file system" in check.message
    if status == "warning":
        assert "trainer.keep_checkpoints=2 plus the one it writes (3)" in check.message
    grpo = replace(w, critic=False)
    assert mp.checkpoint_bytes(shape, grpo) < size


def test_hf_engine_on_a_gpu_keeps_its_copy_in_both_phases():
    cfg = load_config(TINY, ["trainer.device=cuda"])
    rollout, update = memory_lines(fit_checks(cfg, "local", RTX_24GB))
    assert rollout.status == update.status == "ok"
    assert "the HF engine's copy" in rollout.message and "the HF engine's copy" in update.message
    plan = mp.plan_memory(mp.model_shape(cfg.model), mp.workload(cfg, 1), RTX_24GB[0][1])
    assert plan.engine == plan.engine_in_update == mp.model_shape(cfg.model).params * 4
