"""The doctor's checks of the node's software and GPUs, CPU only: torch.cuda, nvidia-smi (a fake
on PATH), /proc and the packages a child Python imports (fake ones on PYTHONPATH) are faked at
their boundary.

Run: python -m pytest tests/test_doctor_node.py -q
"""

from __future__ import annotations

import os
import sys

import pytest
import torch
from helpers import write_executable

from hpc_ppo.config import ModelConfig, RolloutConfig
from hpc_ppo.doctor_node import (
    check_driver,
    check_flash_attn,
    check_gpus,
    check_python,
    check_torch,
    check_vllm,
    driver_version,
    try_import,
    visible_gpus,
)
from hpc_ppo.rank_env import RankEnv


def test_python_version():
    assert check_python().status == "ok"
    old = check_python((3, 9, 18))
    assert old.status == "error" and ">= 3.10" in old.message


def test_cpu_torch_is_an_error_only_when_the_config_needs_cuda(monkeypatch):
    monkeypatch.setattr(torch.version, "cuda", None)
    assert check_torch(None).status == "ok"
    bad = check_torch("rollout.engine=vllm")
    assert bad.status == "error"
    assert "rollout.engine=vllm needs CUDA" in bad.message and "pip install" in bad.message
    monkeypatch.setattr(torch.version, "cuda", "13.0")
    assert check_torch("rollout.engine=vllm").message.endswith("(CUDA 13.0)")


# ---------------------------------------------------------------- driver


@pytest.fixture
def smi(tmp_path, monkeypatch):
    """`smi(version)`: a fake nvidia-smi printing `version`; pynvml made unimportable."""
    monkeypatch.setitem(sys.modules, "pynvml", None)

    def _install(version: str) -> dict[str, str]:
        write_executable(tmp_path / "nvidia-smi", f"#!/bin/sh\necho {version}\necho {version}\n")
        return {"PATH": str(tmp_path)}

    return _install


@pytest.mark.parametrize(
    ("cuda", "driver", "status"),
    [("13.0", "580.159.04", "ok"), ("13.0", "550.54.15", "error"), ("12.8", "550.54.15", "ok")],
)
def test_driver_against_torch_cuda(smi, monkeypatch, tmp_path, cuda, driver, status):
    monkeypatch.setattr(torch.version, "cuda", cuda)
    check = check_driver(smi(driver), "rollout.engine=vllm", proc=tmp_path / "none")
    assert check.status == status, check
    assert f"{driver} (from nvidia-smi)" in check.message
    if status == "error":
        assert f"CUDA {cuda} needs (>= 580" in check.message and "slurm.constraint" in check.message


def test_driver_read_from_proc_without_nvidia_smi(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "pynvml", None)
    proc = tmp_path / "version"
    proc.write_text(
        "NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  580.95.05  Release Build"
        "  (dvs-builder@U16-I3-B03-4-3)  Tue Sep 23 09:52:42 UTC 2025\nGCC version: gcc 12\n"
    )
    assert driver_version({"PATH": str(tmp_path)}, proc) == ("580.95.05", str(proc))


def test_no_driver_is_an_error_only_for_a_gpu_config(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "pynvml", None)
    monkeypatch.setattr(torch.version, "cuda", "13.0")
    environ, proc = {"PATH": str(tmp_path)}, tmp_path / "none"
    assert check_driver(environ, None, proc).status == "ok"
    bad = check_driver(environ, "trainer.device=cuda", proc)
    assert bad.status == "error" and "trainer.device=cuda needs a GPU" in bad.message


# ---------------------------------------------------------------- GPUs


def test_gpus_seen_and_bound(fake_gpus):
    fake_gpus(2, 80)
    gpus = visible_gpus()
    assert gpus == [("NVIDIA GeForce RTX 4090", 80 * 1024**3)] * 2
    environ = {"CUDA_VISIBLE_DEVICES": "0,1", "SLURM_GPUS_ON_NODE": "2"}
    (check,) = check_gpus(environ, gpus, None, "rollout.engine=vllm")
    assert check.status == "ok"
    assert "2 GPU(s)" in check.message and "80.0 GiB" in check.message
    assert "CUDA_VISIBLE_DEVICES=0,1 SLURM_GPUS_ON_NODE=2" in check.message


def test_local_rank_without_its_gpu_is_an_error(fake_gpus):
    fake_gpus(1, 80)
    rank = RankEnv(3, 3, 4, 4, "n1", 20001, 0, "slurm")
    checks = check_gpus({"CUDA_VISIBLE_DEVICES": "0"}, visible_gpus(), rank, None)
    assert [c.status for c in checks] == ["ok", "error"]
    assert "LOCAL_RANK=3" in checks[1].message and "slurm.gpu_binding=task" in checks[1].message


def test_no_gpu_is_an_error_only_for_a_gpu_config(fake_gpus):
    fake_gpus(0, 0)
    assert check_gpus({}, visible_gpus(), None, None)[0].status == "ok"
    (bad,) = check_gpus({}, visible_gpus(), None, "rollout.engine=vllm")
    assert bad.status == "error" and "rollout.engine=hf" in bad.message


# ---------------------------------------------------------------- packages


@pytest.fixture
def packages(tmp_path):
    """`packages(**sources)`: an environment whose child Python imports these modules first."""

    def _make(**sources: str) -> dict[str, str]:
        for name, text in sources.items():
            (tmp_path / name).mkdir()
            (tmp_path / name / "__init__.py").write_text(text)
        return {**os.environ, "PYTHONPATH": str(tmp_path)}

    return _make


def test_try_import_reports_version_missing_and_the_errors_first_line(packages):
    environ = packages(
        vllm="__version__ = '0.26.0'\n",
        flash_attn="raise ImportError('flash_attn_2_cuda.so: undefined symbol: _ZN3c10\\nmore')\n",
    )
    assert try_import("vllm", environ) == ("ok", "0.26.0")
    assert try_import("flash_attn", environ) == (
        "broken",
        "ImportError: flash_attn_2_cuda.so: undefined symbol: _ZN3c10",
    )
    assert try_import("no_such_module_here", environ)[0] == "missing"


def test_vllm_missing_is_an_error_for_a_vllm_config(packages):
    environ = packages()
    assert check_vllm(environ, RolloutConfig(engine="hf")).status == "ok"
    bad = check_vllm(environ, RolloutConfig(engine="vllm"))
    assert bad.status == "error" and "not installed" in bad.message
    assert "pip install -e '.[gpu]'" in bad.message and "rollout.engine=hf" in bad.message
    assert (
        check_vllm(packages(vllm="__version__ = '0.26.0'\n"), RolloutConfig()).message == "0.26.0"
    )


def test_broken_flash_attn_is_an_error_when_auto_would_pick_it(packages):
    environ = packages(flash_attn="raise OSError('libcudart.so.12: cannot open shared object')\n")
    bad = check_flash_attn(environ, ModelConfig(attn_implementation="auto"))
    assert bad.status == "error"
    assert "OSError: libcudart.so.12" in bad.message
    assert "model.attn_implementation=sdpa" in bad.message
    assert check_flash_attn(environ, ModelConfig(attn_implementation="sdpa")).status == "ok"


def test_missing_flash_attn_is_an_error_only_when_asked_for(packages):
    environ = packages()
    assert check_flash_attn(environ, ModelConfig(attn_implementation="auto")).status == "ok"
    bad = check_flash_attn(environ, ModelConfig(attn_implementation="flash_attention_2"))
    assert bad.status == "error" and "pip install -e '.[flash]'" in bad.message
