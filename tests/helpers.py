"""What many test files need: this checkout's paths, `hpc-ppo` in a subprocess, and what a run
folder holds (metrics.jsonl, the MLflow run, the final weights).

    from helpers import TINY, metrics, run_ok      # in any test module, any folder

Plain functions and constants, so module-level code and `parametrize` can use them too;
fixtures built on them are in conftest.py. tests/ has no __init__.py: pytest's default
("prepend") import mode puts the folder of tests/conftest.py on sys.path, which is what makes
`import helpers` work from tests/launch/ and tests/gpu/ as well.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import stat
import subprocess
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from hpc_ppo.rank_env import LAUNCHER_VARS

if TYPE_CHECKING:
    import torch

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"
TINY = str(CONFIGS / "tiny-cpu.yaml")  # the CPU default: tiny model, letters task, 1 rank
# configs/gpu-step.yaml's overrides of the measured full-depth 7B PPO run on 2 x H200
# (docs/PERFORMANCE.md; bench/gpu_host/tp2.sh ppo), the memory estimate's calibration
MEASURED_7B_TP2 = (
    "trainer.nprocs=2",
    "rollout.tp=2",
    "algo.name=ppo",
    "algo.kl_coef=0.001",
    "model.dtype=bfloat16",
    "model.gradient_checkpointing=true",
    "rollout.gpu_memory_utilization=0.35",
    "rollout.n=2",
    "trainer.batch_size=64",
    "algo.mini_batch_size=32",
    "trainer.micro_batch_size=4",
    "trainer.max_tokens_per_micro_batch=4096",
    "trainer.defer_grad_reduce=false",  # a reduce per micro-batch, as the code did then
)


def local_env(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment for an `hpc-ppo` child that must run as on a workstation: without
    SLURM_* (no requeue, launcher "local", even inside an allocation) and without a parent's
    launcher variables (RANK, MASTER_PORT, ...: the child resolves its own)."""
    environ = os.environ if environ is None else environ
    return {
        k: v for k, v in environ.items() if k not in LAUNCHER_VARS and not k.startswith("SLURM_")
    }


def cli(
    *args: str, env: Mapping[str, str] | None = None, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    """`hpc-ppo ARGS` as a fresh process of this checkout (`python -m hpc_ppo.cli`, cwd REPO)."""
    return subprocess.run(
        [sys.executable, "-m", "hpc_ppo.cli", *args],
        cwd=REPO,
        env=local_env() if env is None else dict(env),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@dataclass(frozen=True)
class Run:
    """A finished `hpc-ppo run`: exit code, output and the run folder its last line names."""

    rc: int
    stdout: str
    stderr: str
    run_dir: Path | None  # None when the last stdout line is not "run_dir: ..."

    @property
    def tail(self) -> str:
        """The end of both streams: enough to see why a run failed, in an assert message."""
        return self.stdout[-3000:] + self.stderr[-6000:]


def run(*args: str, env: Mapping[str, str] | None = None, timeout: float = 600) -> Run:
    """`hpc-ppo run ARGS` to its end (any exit code)."""
    proc = cli("run", *args, env=env, timeout=timeout)
    lines = proc.stdout.strip().splitlines()
    last = lines[-1] if lines else ""
    run_dir = Path(last.removeprefix("run_dir: ")) if last.startswith("run_dir: ") else None
    return Run(proc.returncode, proc.stdout, proc.stderr, run_dir)


def run_ok(*args: str, env: Mapping[str, str] | None = None, timeout: float = 600) -> Path:
    """`hpc-ppo run ARGS`, which must succeed and name its run folder last; the folder."""
    result = run(*args, env=env, timeout=timeout)
    assert result.rc == 0, result.tail
    assert result.run_dir is not None, result.tail
    return result.run_dir


def metrics(run_dir: Path, live: bool = False) -> list[dict]:
    """The records of RUN_DIR/metrics.jsonl. `live=True` is for a run that may be writing: a
    missing file is no records and a partial last line is skipped (else both fail)."""
    path = run_dir / "metrics.jsonl"
    if live and not path.is_file():
        return []
    lines = path.read_text().splitlines()
    return [json.loads(line) for line in lines if not live or line.endswith("}")]


# Metrics that differ between two runs of the same numbers: seconds, rates, start-up.
TIMINGS = ("time/", "perf/", "startup/")


def history(rows: list[dict]) -> dict[int, dict[str, float]]:
    """metrics.jsonl records merged per step, without TIMINGS and the "time" field; a metric
    logged twice for one step is an error."""
    out: dict[int, dict[str, float]] = {}
    for row in rows:
        row = dict(row)
        step = row.pop("step")
        row.pop("time", None)
        clean = {k: v for k, v in row.items() if not k.startswith(TIMINGS)}
        assert not set(clean) & set(out.get(step, {})), f"step {step} logged twice: {clean}"
        out.setdefault(step, {}).update(clean)
    return out


def mlflow_client(run_dir: Path):
    """A client of the run folder's MLflow sqlite store."""
    from mlflow import MlflowClient  # slow to import: only tests that read MLflow pay for it

    return MlflowClient(tracking_uri=f"sqlite:///{run_dir.absolute() / 'mlflow.db'}")


def mlflow_runs(run_dir: Path) -> tuple:
    """(client, every run of every experiment in the run folder's store)."""
    client = mlflow_client(run_dir)
    return client, client.search_runs([e.experiment_id for e in client.search_experiments()])


def mlflow_run(run_dir: Path) -> tuple:
    """(client, the store's one run); fails if there is not exactly one."""
    client, runs = mlflow_runs(run_dir)
    assert len(runs) == 1, [(r.info.run_id, r.info.status) for r in runs]
    return client, runs[0]


def final_weights(run_dir: Path, step: int | None = None) -> dict[str, torch.Tensor]:
    """Policy (and critic) of the checkpoint at `step` (default: newest), loaded with DCP into
    this process as "policy.<name>" / "critic.<name>" tensors."""
    from hpc_ppo.export import load_run_weights

    return load_run_weights(run_dir, step)


def write_executable(path: Path, text: str) -> Path:
    """A script at `path` that PATH lookups run: a fake of an outside tool (sbatch, scontrol)."""
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return path


@contextlib.contextmanager
def gloo_rank() -> Iterator[None]:
    """torch.distributed as one gloo rank in this process (what FSDP2 and DCP need)."""
    import torch.distributed as dist

    from hpc_ppo.rank_env import find_free_port

    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{find_free_port()}", rank=0, world_size=1
    )
    try:
        yield
    finally:
        dist.destroy_process_group()


def write_model_config(folder: Path, shape: dict, tokenizer: bool = False) -> Path:
    """A Qwen2 model folder of `shape` (bench/rollout.py's SHAPES) holding config.json and,
    with `tokenizer`, the tiny tokenizer and an empty weights file: enough for what reads
    folders without loading weights (the doctor, its memory estimate)."""
    folder.mkdir(parents=True, exist_ok=True)
    conf = {**shape, "model_type": "qwen2", "architectures": ["Qwen2ForCausalLM"]}
    (folder / "config.json").write_text(json.dumps(conf))
    if tokenizer:
        from hpc_ppo.model import tiny_tokenizer

        tiny_tokenizer().save_pretrained(folder)
        (folder / "model.safetensors").write_bytes(b"")
    return folder


def sbatch_options(text: str) -> dict[str, str | bool]:
    """The #SBATCH options of a batch script as sbatch reads them (it strips shell quotes)."""
    out: dict[str, str | bool] = {}
    for line in text.splitlines():
        if line.startswith("#SBATCH "):
            (token,) = shlex.split(line.removeprefix("#SBATCH "))  # exactly one argument
            name, eq, value = token.removeprefix("--").partition("=")
            out[name] = value if eq else True
    return out


def qwen2_config(vocab: int, hidden: int = 32, layers: int = 2, **kw):
    """A small Qwen2 config (4 query heads, 2 key/value heads: grouped-query attention, as
    the real models), for tests that build a model in code."""
    from transformers import Qwen2Config

    return Qwen2Config(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        **kw,
    )
