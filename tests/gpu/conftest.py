"""GPU integration tests: the in-rank vLLM engine on a real GPU. Skipped without CUDA or vllm.

    python -m pytest tests/gpu -q          # on a GPU host with the vLLM bundle installed

Every test that starts vLLM does so in a subprocess (a real rank or `hpc-ppo run`), so each
engine gets a fresh process. The model is Qwen2.5-0.5B-shaped with random weights, written
once per session (or taken from HPC_PPO_GPU_MODEL_DIR).
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import helpers
import pytest
from helpers import REPO

HERE = Path(__file__).resolve().parent


def _skip_reason() -> str | None:
    import torch

    if not torch.cuda.is_available():
        return "needs a CUDA GPU"
    if importlib.util.find_spec("vllm") is None:
        return "needs vllm (see shared/gpu-host/README.md for an offline install)"
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    mine = [item for item in items if HERE in Path(str(item.fspath)).resolve().parents]
    if not mine:
        return
    reason = _skip_reason()
    for item in mine:
        item.add_marker(pytest.mark.gpu)
        if reason:
            item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    given = os.environ.get("HPC_PPO_GPU_MODEL_DIR")
    if given:
        return Path(given)
    sys.path.insert(0, str(REPO))
    from bench.rollout import write_model_dir

    path = write_model_dir(tmp_path_factory.mktemp("model") / "qwen2.5-0.5b-shape")
    import torch

    torch.cuda.empty_cache()  # the pytest process keeps only its CUDA context
    return path


def _rank_env_without_torchrun() -> dict[str, str]:
    """This process's environment minus the launcher and Slurm variables (a child resolves its
    own), with this checkout first on PYTHONPATH."""
    env = helpers.local_env()
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env


def _one_bound_gpu_env(local_id: int) -> dict[str, str]:
    """A Slurm task bound to one GPU (--gpus-per-task=1) whose SLURM_LOCALID is `local_id`."""
    env = _rank_env_without_torchrun()
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",")[0].strip() or "0"
    from hpc_ppo.rank_env import find_free_port

    env.update(
        CUDA_VISIBLE_DEVICES=visible,
        SLURM_LOCALID=str(local_id),
        SLURM_PROCID="0",
        SLURM_STEP_ID="0",
        SLURM_NTASKS="1",
        SLURM_JOB_NODELIST="localhost",
        SLURM_JOB_ID="4242",
        MASTER_PORT=str(find_free_port()),
        PYTHONUNBUFFERED="1",
    )
    return env


@pytest.fixture(scope="session")
def bound_gpu_env():
    """`bound_gpu_env(local_id)`: the environment of a Slurm task bound to one GPU."""
    return _one_bound_gpu_env


@pytest.fixture(scope="session")
def vllm_cache(tmp_path_factory: pytest.TempPathFactory) -> str:
    """`rollout.cache_dir=...` shared by the runs of the session: vLLM compiles each model
    shape once (a cold engine start took 76 s, a warm one 29 s), not in every test's own
    output folder. The default folder is checked by test_vllm_engine.py and test_tp2.py."""
    return f"rollout.cache_dir={tmp_path_factory.mktemp('vllm-cache')}"


@pytest.fixture(scope="session")
def local_env() -> dict[str, str]:
    """The environment for `hpc-ppo run` children: no inherited rank or Slurm variables."""
    return _rank_env_without_torchrun()
