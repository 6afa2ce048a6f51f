"""Tensor parallelism 2 on two GPUs: the engine's TP group, and a PPO run stopped and resumed.

    python -m pytest tests/gpu/test_tp2.py -v -s      # a host with 2 or more GPUs

Skipped with fewer than 2 GPUs. The default `rollout.allreduce=custom` runs without NVLink
multicast (rollout/allreduce.py); the PPO run keeps CUDA graphs on, as users run it.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from hpc_ppo.rank_env import find_free_port

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
MEAN_TOL = 0.1  # as tests/gpu/test_vllm_engine.py

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available() or torch.cuda.device_count() < 2, reason="needs 2 GPUs"
)


@pytest.fixture(scope="module")
def ranks(model_dir: Path, tmp_path_factory: pytest.TempPathFactory, local_env) -> list[dict]:
    work = tmp_path_factory.mktemp("tp2")
    port = str(find_free_port())
    procs = []
    for rank in (0, 1):
        env = dict(local_env, RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank))
        env["LOCAL_WORLD_SIZE"] = "2"  # as torchrun and `hpc-ppo run` set it
        env.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=port, PYTHONUNBUFFERED="1")
        log = open(work / f"log{rank}", "w")  # noqa: SIM115 (closed by the process's end)
        cmd = [
            sys.executable,
            str(HERE / "tp_checks.py"),
            str(model_dir),
            str(work),
            str(work / "out"),
        ]
        procs.append(subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT))
    codes = [p.wait(timeout=420) for p in procs]
    tail = "".join((work / f"log{r}").read_text()[-3000:] for r in (0, 1))
    out = []
    for rank in (0, 1):
        path = work / f"out.rank{rank}.json"
        assert path.is_file(), f"exit codes {codes}\n{tail}"
        data = json.loads(path.read_text())
        data["_tail"] = tail
        out.append(data)
    print(json.dumps([{k: v for k, v in d.items() if k != "_tail"} for d in out], indent=1))
    return out


def ok(data: dict, name: str) -> dict:
    got = data.get(name, {})
    assert got.get("ok"), got.get("error", "") + data["_tail"]
    return got


def test_both_ranks_of_the_group_return_identical_samples(ranks):
    for data in ranks:
        first = ok(data, "first_cycle")
        assert first["samples"] == 64
        assert first["identical_fraction"] == 1.0, first
    assert "fusion off" in ok(ranks[0], "init")["allreduce"]


def test_tp2_push_slices_weights_right(ranks):
    for data in ranks:
        for name in ("first_cycle", "pushed_perturbed"):
            g = ok(data, name)["gap"]
            assert g["tokens"] > 1000 and g["mean"] < MEAN_TOL, (name, g)
        pushed = ok(data, "pushed_perturbed")
        assert pushed["gap_vs_stale_weights"]["mean"] > 10 * pushed["gap"]["mean"], pushed
        assert pushed["slept_gib"] > 0.5  # level-2 sleep gave back this rank's shard + cache


def _rows(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return []
    return [json.loads(x) for x in path.read_text().splitlines() if x.endswith("}")]


def test_tp2_ppo_run_stopped_by_sigterm_resumes_as_one_run(model_dir, tmp_path, local_env):
    """2 ranks, TP=2, CUDA graphs: SIGTERM after the second step, resume, 5 steps in all."""
    args = [
        str(REPO / "configs/gpu-smoke-0.5b.yaml"),
        f"model.path={model_dir}",
        f"trainer.output_dir={tmp_path}",
        "trainer.nprocs=2",
        "rollout.tp=2",
        "rollout.enforce_eager=false",
        "trainer.total_steps=5",
        "trainer.run_name=tp2",
    ]
    run_dir = tmp_path / "tp2"
    cmd = [sys.executable, "-m", "hpc_ppo.cli", "run"]
    log = tmp_path / "first.log"
    with open(log, "w") as f:
        proc = subprocess.Popen([*cmd, *args], cwd=REPO, env=local_env, stdout=f, stderr=f)
    deadline = time.monotonic() + 400
    while len([r for r in _rows(run_dir) if "reward/mean" in r]) < 2:
        assert proc.poll() is None, log.read_text()[-6000:]
        assert time.monotonic() < deadline, log.read_text()[-6000:]
        time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=180) == 0, log.read_text()[-6000:]
    first = sorted({r["step"] for r in _rows(run_dir) if "reward/mean" in r})
    assert 2 <= len(first) < 5, first
    resumed = subprocess.run(
        [*cmd, str(run_dir)], cwd=REPO, env=local_env, capture_output=True, text=True, timeout=400
    )
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-6000:]
    rows = [r for r in _rows(run_dir) if "reward/mean" in r]
    assert [r["step"] for r in rows] == [0, 1, 2, 3, 4], [r["step"] for r in rows]
    for r in rows:
        assert r["actor/logprob_gap"] < MEAN_TOL, r
        assert r["gpu/used_rollout_gib"] > 0 and r["gpu/peak_allocated_gib"] > 0, r
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{run_dir / 'mlflow.db'}")
    runs = client.search_runs(client.get_experiment_by_name("hpc-ppo").experiment_id)
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    history = client.get_metric_history(runs[0].info.run_id, "reward/mean")
    assert sorted(m.step for m in history) == [0, 1, 2, 3, 4]
    print(json.dumps(rows[-1], indent=1))
