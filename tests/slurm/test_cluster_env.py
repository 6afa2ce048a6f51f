"""hpc_ppo.rank_env under a real srun: 2 nodes x 2 tasks on the local Slurm cluster (conftest.py).

HPC_PPO_REQUIRE_SLURM=1 python -m pytest tests/slurm/test_cluster_env.py -q
"""

from __future__ import annotations

import json
import sys
import time

import pytest

from hpc_ppo.rank_env import expand_nodelist

pytestmark = pytest.mark.slurm

# One JSON line per task: what it resolved, plus where it really ran.
PROBE = """
import json, os, socket
from dataclasses import asdict
from hpc_ppo.rank_env import resolve_rank_env
info = asdict(resolve_rank_env())
info.update(host=socket.gethostname(), localid=os.environ.get("SLURM_LOCALID"),
            restart=os.environ.get("SLURM_RESTART_COUNT"), cvd=os.environ.get("CUDA_VISIBLE_DEVICES"))
print(json.dumps(info), flush=True)
"""

ALLREDUCE = """
import datetime, json, torch, torch.distributed as dist
from hpc_ppo.rank_env import export_torch_env, resolve_rank_env
env = resolve_rank_env()
export_torch_env(env)
dist.init_process_group("gloo", init_method="env://", timeout=datetime.timedelta(seconds=60))
t = torch.tensor([float(env.rank + 1)])
dist.all_reduce(t)
print(json.dumps({"rank": env.rank, "sum": t.item(), "world": dist.get_world_size()}), flush=True)
dist.destroy_process_group()
"""

SRUN_2X2 = ["srun", "-N2", "--ntasks-per-node=2", "--kill-on-bad-exit=1", "--time=2"]


def _records(stdout: str) -> list[dict]:
    """The tasks' JSON lines, by rank."""
    records = [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]
    return sorted(records, key=lambda r: r["rank"])


def _assert_layout(records: list[dict]) -> None:
    """4 tasks, ranks 0..3, 2 per node on n1/n2, all agreeing on the rendezvous n1:<port>."""
    assert [r["rank"] for r in records] == [0, 1, 2, 3], records
    assert {r["world_size"] for r in records} == {4}
    assert {r["local_world_size"] for r in records} == {2}
    assert {r["source"] for r in records} == {"slurm"}
    assert [(r["host"], r["node_rank"]) for r in records] == [
        ("n1", 0),
        ("n1", 0),
        ("n2", 1),
        ("n2", 1),
    ]
    assert {r["master_addr"] for r in records} == {"n1"}
    assert len({r["master_port"] for r in records}) == 1


def test_srun_2x2_cpu(slurm_cluster) -> None:
    out = slurm_cluster.run([*SRUN_2X2, sys.executable, "-c", PROBE]).stdout
    records = _records(out)
    _assert_layout(records)
    assert [r["local_rank"] for r in records] == [0, 1, 0, 1]
    assert [r["local_rank"] for r in records] == [int(r["localid"]) for r in records]


def test_srun_2x2_one_gpu_per_task(slurm_cluster) -> None:
    # what --gpus-per-task=1 does on a GPU node: each task sees only its own device
    cmd = 'CUDA_VISIBLE_DEVICES=$SLURM_LOCALID exec "$0" -c "$1"'
    records = _records(
        slurm_cluster.run([*SRUN_2X2, "bash", "-c", cmd, sys.executable, PROBE]).stdout
    )
    _assert_layout(records)
    assert [r["cvd"] for r in records] == ["0", "1", "0", "1"]
    assert [r["local_rank"] for r in records] == [0, 0, 0, 0]


def test_srun_2x2_all_gpus_visible(slurm_cluster) -> None:
    env = slurm_cluster.job_env(CUDA_VISIBLE_DEVICES="0,1")
    records = _records(slurm_cluster.run([*SRUN_2X2, sys.executable, "-c", PROBE], env=env).stdout)
    _assert_layout(records)
    assert {r["cvd"] for r in records} == {"0,1"}
    assert (
        [r["local_rank"] for r in records] == [int(r["localid"]) for r in records] == [0, 1, 0, 1]
    )


def test_gloo_all_reduce_across_nodes(slurm_cluster) -> None:
    records = _records(
        slurm_cluster.run([*SRUN_2X2, sys.executable, "-c", ALLREDUCE], timeout=180).stdout
    )
    assert [(r["rank"], r["sum"], r["world"]) for r in records] == [(i, 10.0, 4) for i in range(4)]


def test_batch_script_is_not_a_rank_and_requeue_moves_the_port(slurm_cluster) -> None:
    """In the batch shell resolve_rank_env falls back to one process; a requeued job's steps see
    SLURM_RESTART_COUNT=1 and rendezvous on another port than the first run."""
    out = slurm_cluster.dir / "requeue.out"
    script = f"""#!/bin/bash
"{sys.executable}" -c '{PROBE}' | sed 's/^/batch /'
srun --kill-on-bad-exit=1 "{sys.executable}" -c '{PROBE}'
if [ -z "$SLURM_RESTART_COUNT" ]; then scontrol requeue "$SLURM_JOB_ID"; sleep 60; fi
"""
    (slurm_cluster.dir / "requeue.sh").write_text(script)
    opts = [
        "-N2",
        "--ntasks-per-node=2",
        "--time=2",
        "--requeue",
        "--open-mode=append",
        f"--output={out}",
    ]
    job = slurm_cluster.sbatch(*opts, str(slurm_cluster.dir / "requeue.sh"))
    assert slurm_cluster.wait_job(job, timeout=90) == "COMPLETED", out.read_text()
    lines = out.read_text().splitlines()
    batch = [
        json.loads(line.removeprefix("batch ")) for line in lines if line.startswith("batch {")
    ]
    steps = [json.loads(line) for line in lines if line.startswith("{")]
    assert [(b["source"], b["world_size"], b["host"]) for b in batch] == [("single", 1, "n1")] * 2
    assert len(steps) == 8, lines
    first = sorted(steps[:4], key=lambda r: r["rank"])
    second = sorted(steps[4:], key=lambda r: r["rank"])
    _assert_layout(first)
    _assert_layout(second)
    assert {s["restart"] for s in steps[:4]} == {None} and {s["restart"] for s in second} == {"1"}
    assert first[0]["master_port"] != second[0]["master_port"]


@pytest.mark.parametrize(
    "nodelist",
    [
        "gpu[01-03,07],cpu5",
        "n[1-2]",
        "n[9-11]",
        "n[08-10]",
        "a-b-c[001-002]",
        "node1,node2",
        "rack[1-2]-n[1-2]",
    ],
)
def test_expand_nodelist_matches_scontrol(slurm_cluster, nodelist: str) -> None:
    hosts = slurm_cluster.run(
        ["scontrol", "show", "hostnames", nodelist], timeout=30
    ).stdout.split()
    assert expand_nodelist(nodelist) == hosts


def test_accounting_records_jobs(slurm_cluster) -> None:
    if not slurm_cluster.accounting:
        pytest.skip(
            "cluster started without accounting (HPC_PPO_SLURM_ACCT=0 or slurmdbd not installed)"
        )
    job = slurm_cluster.sbatch("-N1", "--wrap", "true", f"--output={slurm_cluster.dir}/acct.out")
    assert slurm_cluster.wait_job(job) == "COMPLETED"
    for _ in range(50):  # slurmctld reports to slurmdbd asynchronously
        state = slurm_cluster.run(
            ["sacct", "-n", "-X", "-P", "-o", "State", "-j", str(job)], timeout=30
        ).stdout
        if state.strip() == "COMPLETED":
            break
        time.sleep(0.2)
    assert state.strip() == "COMPLETED"
