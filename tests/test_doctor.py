"""`hpc-ppo doctor`: the report, its exit code, the config's checks (validation, model folder,
GPUs the job expects) and the command line. CPU only; GPUs are faked in torch.cuda.

Run: python -m pytest tests/test_doctor.py -q
"""

from __future__ import annotations

import os
import re

import pytest
from helpers import CONFIGS, TINY, write_model_config

from bench.rollout import QWEN7B
from hpc_ppo.cli import main
from hpc_ppo.config import load_config
from hpc_ppo.doctor import (
    binding_checks,
    check_model_dirs,
    default_launcher,
    load_for_doctor,
    run_cache,
)

GiB = 1024**3
LINE = re.compile(r"^(ok|warning|error) +(\S+) +\S")


def report(capsys) -> tuple[list[str], str]:
    """(the check lines, the summary line) of a doctor run's stdout."""
    lines = capsys.readouterr().out.splitlines()
    assert all(LINE.match(line) for line in lines[:-1]), lines
    return lines[:-1], lines[-1]


@pytest.fixture
def here(tmp_path, monkeypatch):
    """Every folder the doctor probes inside tmp_path, no Slurm or torchrun variables."""
    for var in list(os.environ):
        if var.startswith(("SLURM_", "NCCL_", "GLOO_")) or var in ("RANK", "WORLD_SIZE"):
            monkeypatch.delenv(var)
    for var in ("HOME", "TMPDIR"):
        monkeypatch.setenv(var, str(tmp_path))
    for var in ("HF_HOME", "TRANSFORMERS_CACHE", "VLLM_CACHE_ROOT", "TRITON_CACHE_DIR"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_node_only(here, capsys):
    assert main(["doctor"]) == 0
    lines, summary = report(capsys)
    names = [LINE.match(line)[2] for line in lines]
    assert names[:4] == ["python", "hpc-ppo", "torch", "driver"]
    assert {
        "gpus",
        "vllm",
        "flash-attn",
        "bytecode",
        "nccl-env",
        "multicast",
        "slurm",
        "rank",
        "tmpdir",
    } <= set(names)
    assert "config" not in names
    assert summary == f"doctor: {len(lines)} ok, 0 warning(s), 0 error(s)"


def test_tiny_config_is_fine_here(here, capsys):
    assert main(["doctor", TINY]) == 0
    lines, summary = report(capsys)
    assert any(f"{TINY}: valid for --launcher local (1 rank(s)" in line for line in lines)
    assert any(line.startswith("ok") and "CPU run:" in line for line in lines)
    assert summary.endswith("0 error(s)")


def test_every_config_error_is_a_line_and_exit_2(here, capsys):
    assert main(["doctor", TINY, "rollout.n=0", "actor.lr=2"]) == 2
    lines, summary = report(capsys)
    errors = [line for line in lines if line.startswith("error")]
    assert len(errors) == 2 and summary.endswith("2 error(s)")
    assert "rollout.n=0: must be >= 1" in errors[0] and "actor.lr=2" in errors[1]


def test_overrides_alone_check_the_embedded_default(here, capsys):
    assert main(["doctor", "rollout.n=0"]) == 2
    lines, _ = report(capsys)
    assert [line.split(None, 2)[2] for line in lines if " config " in line] == [
        "rollout.n=0: must be >= 1 (allowed range [1, 1024])",
        "the checks that need a config were skipped: fix the errors above first",
    ]
    assert main(["doctor", "rollout.n=8"]) == 0
    lines, _ = report(capsys)
    assert any("the embedded default config: valid for --launcher local" in line for line in lines)


def test_warnings_alone_exit_0(here, capsys, monkeypatch):
    (here / "a-file").write_text("")
    monkeypatch.setenv("HF_HOME", str(here / "a-file"))
    assert main(["doctor"]) == 0
    lines, summary = report(capsys)
    (warning,) = [line for line in lines if line.startswith("warning")]
    assert "is not a folder: set HF_HOME" in warning and summary.endswith(
        "1 warning(s), 0 error(s)"
    )


def test_qwen2_7b_on_one_24gb_gpu(here, capsys, fake_gpus):
    model = write_model_config(here / "model", QWEN7B, tokenizer=True)
    fake_gpus(1, 24)
    argv = ["doctor", str(CONFIGS / "qwen2-7b.yaml"), f"model.path={model}", "data.path=null"]
    assert main([*argv, "--launcher", "slurm"]) == 2
    lines, _ = report(capsys)
    memory = [line for line in lines if LINE.match(line)[2] == "memory"]
    assert memory[0].startswith("error") and "of 24.0 GiB" in memory[0]
    assert "does not fit: use slurm.nodes=" in memory[0]
    binding = [line for line in lines if LINE.match(line)[2] == "binding"]
    assert binding[0].startswith("warning") and "slurm.gpu_binding=task" in binding[0]
    assert binding[1].startswith("error") and "set rollout.tp to at most 1" in binding[1]


def test_default_launcher_follows_slurm_job():
    assert default_launcher({"SLURM_JOB_ID": "7"}) == "slurm"
    assert default_launcher({}) == "local"


def test_rule_errors_still_give_a_config_for_the_other_checks(tmp_path):
    cfg, checks = load_for_doctor(TINY, [f"model.path={tmp_path / 'absent'}"], "local")
    assert cfg is not None and cfg.model.path == str(tmp_path / "absent")
    assert [c.status for c in checks] == ["error"] and "directory not found" in checks[0].message
    cfg, checks = load_for_doctor(TINY, ["rollout.n=abc"], "local")
    assert cfg is None
    assert [c.status for c in checks] == ["error", "warning"] and "skipped" in checks[1].message


def test_model_folder_without_tokenizer_or_weights(tmp_path):
    model = write_model_config(tmp_path / "model", QWEN7B)
    (check,) = check_model_dirs(load_config(TINY, [f"model.path={model}"]))
    assert check.status == "error"
    assert f"model.path={model} has config.json but no tokenizer" in check.message
    assert "and no weights" in check.message
    write_model_config(model, QWEN7B, tokenizer=True)
    (check,) = check_model_dirs(load_config(TINY, [f"model.path={model}"]))
    assert check.status == "ok" and "1 weight file(s)" in check.message


def test_binding_for_local_ranks_and_tp(fake_gpus):
    gpu = [("NVIDIA H200", 140 * GiB)]
    local = load_config(TINY, ["trainer.device=cuda", "trainer.nprocs=2"])
    (check,) = binding_checks(local, "local", gpu, {"CUDA_VISIBLE_DEVICES": "0"})
    assert check.status == "error" and "lower trainer.nprocs to 1" in check.message
    vllm = load_config(
        TINY,
        ["rollout.engine=vllm", "trainer.device=cuda", "rollout.tp=4", "slurm.gpus_per_node=4"],
    )
    checks = binding_checks(vllm, "slurm", gpu * 4, {"SLURM_GPUS_ON_NODE": "2"})
    assert [c.status for c in checks] == ["ok", "error"]
    assert "set rollout.tp to at most 2" in checks[1].message
    assert binding_checks(load_config(TINY), "local", [], {}) == []


def test_vllm_caches_checked_only_for_a_vllm_run(tmp_path):
    assert run_cache(load_config(TINY)) is None
    vllm = ["rollout.engine=vllm", "trainer.device=cuda"]
    given = load_config(TINY, [*vllm, f"rollout.cache_dir={tmp_path / 'c'}"])
    assert run_cache(given) == (tmp_path / "c").resolve()
