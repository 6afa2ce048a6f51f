"""Unit tests for hpc_ppo.rank_env: rank environments as srun/torchrun set them, faked as dicts.

python -m pytest tests/launch/test_env.py -q
"""

from __future__ import annotations

import os
import socket

import pytest

from hpc_ppo.rank_env import (
    PORT_HI,
    PORT_LO,
    RankEnv,
    expand_nodelist,
    export_torch_env,
    find_free_port,
    first_host,
    master_port,
    resolve_rank_env,
    tasks_per_node,
)

# What srun sets for task 3 of `srun -N2 --ntasks-per-node=2` (measured on the local cluster).
SLURM_2X2 = {
    "SLURM_JOB_ID": "1234",
    "SLURM_STEP_ID": "0",
    "SLURM_PROCID": "3",
    "SLURM_LOCALID": "1",
    "SLURM_NODEID": "1",
    "SLURM_NTASKS": "4",
    "SLURM_NPROCS": "4",
    "SLURM_NTASKS_PER_NODE": "2",
    "SLURM_TASKS_PER_NODE": "2(x2)",
    "SLURM_STEP_TASKS_PER_NODE": "2(x2)",
    "SLURM_JOB_NODELIST": "gpu[07-08]",
    "SLURM_STEP_NODELIST": "gpu[07-08]",
}
TORCHRUN = {
    "RANK": "5",
    "WORLD_SIZE": "8",
    "MASTER_ADDR": "head",
    "MASTER_PORT": "29500",
    "LOCAL_RANK": "1",
    "LOCAL_WORLD_SIZE": "2",
}
PORT_1234 = master_port(1234, 0)


def _without(env: dict[str, str], *names: str) -> dict[str, str]:
    return {k: v for k, v in env.items() if k not in names}


# (id, environ, expected fields: rank, local_rank, world, local_world, addr, port, node_rank, source)
CASES = [
    ("torchrun", TORCHRUN, (5, 1, 8, 2, "head", 29500, 2, "torchrun-style env")),
    (
        "torchrun wins inside srun",
        {**SLURM_2X2, **TORCHRUN},
        (5, 1, 8, 2, "head", 29500, 2, "torchrun-style env"),
    ),
    (
        "torchrun defaults",
        _without(TORCHRUN, "LOCAL_RANK", "LOCAL_WORLD_SIZE"),
        (5, 0, 8, 1, "head", 29500, 5, "torchrun-style env"),
    ),
    (
        "torchrun GROUP_RANK",
        {**TORCHRUN, "GROUP_RANK": "7"},
        (5, 1, 8, 2, "head", 29500, 7, "torchrun-style env"),
    ),
    (
        "partial torch vars ignored",
        {**SLURM_2X2, "RANK": "9", "WORLD_SIZE": "10"},
        (3, 1, 4, 2, "gpu07", PORT_1234, 1, "slurm"),
    ),
    (
        "slurm all GPUs visible",
        {**SLURM_2X2, "CUDA_VISIBLE_DEVICES": "0,1"},
        (3, 1, 4, 2, "gpu07", PORT_1234, 1, "slurm"),
    ),
    (
        "slurm --gpus-per-task=1",
        {**SLURM_2X2, "CUDA_VISIBLE_DEVICES": "3"},
        (3, 0, 4, 2, "gpu07", PORT_1234, 1, "slurm"),
    ),
    (
        "slurm one GPU by UUID",
        {**SLURM_2X2, "CUDA_VISIBLE_DEVICES": "GPU-8f6a1c2e-0000"},
        (3, 0, 4, 2, "gpu07", PORT_1234, 1, "slurm"),
    ),
    ("slurm CPU only", SLURM_2X2, (3, 1, 4, 2, "gpu07", PORT_1234, 1, "slurm")),
    (
        "slurm empty CUDA_VISIBLE_DEVICES",
        {**SLURM_2X2, "CUDA_VISIBLE_DEVICES": ""},
        (3, 1, 4, 2, "gpu07", PORT_1234, 1, "slurm"),
    ),
    (
        "slurm MASTER_PORT override",
        {**SLURM_2X2, "MASTER_PORT": "4242"},
        (3, 1, 4, 2, "gpu07", 4242, 1, "slurm"),
    ),
    (
        "slurm restart count",
        {**SLURM_2X2, "SLURM_RESTART_COUNT": "2"},
        (3, 1, 4, 2, "gpu07", master_port(1234, 2), 1, "slurm"),
    ),
    (
        # srun -n3 in a --ntasks-per-node=2 job: the inherited SLURM_NTASKS_PER_NODE=2 is stale
        "slurm uneven step layout",
        {
            **SLURM_2X2,
            "SLURM_PROCID": "2",
            "SLURM_LOCALID": "0",
            "SLURM_NTASKS": "3",
            "SLURM_STEP_TASKS_PER_NODE": "2,1",
            "SLURM_TASKS_PER_NODE": "2,1",
        },
        (2, 0, 3, 1, "gpu07", PORT_1234, 1, "slurm"),
    ),
    (
        "slurm NPROCS, TASKS_PER_NODE, job nodelist only",
        {
            **_without(
                SLURM_2X2, "SLURM_NTASKS", "SLURM_STEP_TASKS_PER_NODE", "SLURM_STEP_NODELIST"
            ),
            "SLURM_PROCID": "6",
            "SLURM_LOCALID": "0",
            "SLURM_NODEID": "3",
            "SLURM_NPROCS": "7",
            "SLURM_TASKS_PER_NODE": "2(x3),1",
            "SLURM_JOB_NODELIST": "rack[1-2]-n[1-2]",
        },
        (6, 0, 7, 1, "rack1-n1", PORT_1234, 3, "slurm"),
    ),
    (
        "slurm step nodelist preferred",
        {**SLURM_2X2, "SLURM_STEP_NODELIST": "gpu08", "SLURM_NODEID": "0", "SLURM_PROCID": "1"},
        (1, 1, 4, 2, "gpu08", PORT_1234, 0, "slurm"),
    ),
]


@pytest.mark.parametrize("environ, expected", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_resolve_rank_env(environ: dict[str, str], expected: tuple) -> None:
    assert resolve_rank_env(environ) == RankEnv(*expected)


@pytest.mark.parametrize(
    "environ",
    [{}, _without(SLURM_2X2, "SLURM_STEP_ID"), {"RANK": "3", "WORLD_SIZE": "4"}],
    ids=["empty", "batch script is not a rank", "partial torch vars"],
)
def test_single_process(environ: dict[str, str]) -> None:
    env = resolve_rank_env(environ)
    assert (env.rank, env.world_size, env.local_rank, env.master_addr, env.source) == (
        0,
        1,
        0,
        "127.0.0.1",
        "single",
    )
    with socket.socket() as s:  # the port it chose is free
        s.bind(("127.0.0.1", env.master_port))


def test_single_process_honours_master_port() -> None:
    assert resolve_rank_env({"MASTER_PORT": "31337"}).master_port == 31337


def test_defaults_to_os_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("SLURM_") or name in TORCHRUN:
            monkeypatch.delenv(name)
    for name, value in TORCHRUN.items():
        monkeypatch.setenv(name, value)
    assert resolve_rank_env().source == "torchrun-style env"


# (id, environ, substrings the message must contain)
ERRORS = [
    (
        "malformed SLURM_PROCID",
        {**SLURM_2X2, "SLURM_PROCID": "abc"},
        ["SLURM_PROCID='abc' is not an integer"],
    ),
    (
        "malformed SLURM_JOB_ID",
        {**SLURM_2X2, "SLURM_JOB_ID": "12_3"},
        ["SLURM_JOB_ID='12_3' is not an integer"],
    ),
    (
        "malformed restart count",
        {**SLURM_2X2, "SLURM_RESTART_COUNT": "x"},
        ["SLURM_RESTART_COUNT='x'"],
    ),
    ("malformed MASTER_PORT", {**SLURM_2X2, "MASTER_PORT": "80a"}, ["MASTER_PORT='80a'"]),
    ("malformed RANK", {**TORCHRUN, "RANK": "r0"}, ["RANK='r0' is not an integer"]),
    ("malformed tasks per node", {**SLURM_2X2, "SLURM_STEP_TASKS_PER_NODE": "2(y2)"}, ["'2(y2)'"]),
    (
        "missing world size",
        _without(SLURM_2X2, "SLURM_NTASKS", "SLURM_NPROCS"),
        ["SLURM_NPROCS is not set"],
    ),
    (
        "missing nodelist",
        _without(SLURM_2X2, "SLURM_STEP_NODELIST", "SLURM_JOB_NODELIST"),
        ["SLURM_STEP_NODELIST and SLURM_JOB_NODELIST are both unset"],
    ),
    (
        "malformed nodelist",
        {**SLURM_2X2, "SLURM_STEP_NODELIST": "gpu[01-"},
        ["malformed nodelist 'gpu[01-'"],
    ),
    ("rank beyond world", {**TORCHRUN, "RANK": "8"}, ["rank=8 not in [0, world_size=8)"]),
    (
        "local rank beyond node",
        {**TORCHRUN, "LOCAL_RANK": "2"},
        ["local_rank=2 not in [0, local_world_size=2)"],
    ),
    (
        "task without a GPU of its own",
        {**SLURM_2X2, "SLURM_LOCALID": "2", "SLURM_PROCID": "2", "CUDA_VISIBLE_DEVICES": "0,1"},
        [
            "SLURM_LOCALID=2",
            "CUDA_VISIBLE_DEVICES='0,1' lists only 2 device(s)",
            "--gpus-per-task=1",
            "--gpus-per-node",
        ],
    ),
]


@pytest.mark.parametrize("environ, parts", [e[1:] for e in ERRORS], ids=[e[0] for e in ERRORS])
def test_errors_name_variable_and_value(environ: dict[str, str], parts: list[str]) -> None:
    with pytest.raises(ValueError) as excinfo:
        resolve_rank_env(environ)
    for part in parts:
        assert part in str(excinfo.value)


NODELISTS = [
    ("gpu[01-03,07],cpu5", ["gpu01", "gpu02", "gpu03", "gpu07", "cpu5"]),
    ("n[1-2]", ["n1", "n2"]),
    ("n[9-11]", ["n9", "n10", "n11"]),
    ("n[08-10]", ["n08", "n09", "n10"]),
    ("a-b-c[001-002]", ["a-b-c001", "a-b-c002"]),
    ("node1,node2", ["node1", "node2"]),
    ("node1", ["node1"]),
    ("rack[1-2]-n[1-2]", ["rack1-n1", "rack1-n2", "rack2-n1", "rack2-n2"]),
    ("x[3]", ["x3"]),
]


@pytest.mark.parametrize("nodelist, hosts", NODELISTS, ids=[n for n, _ in NODELISTS])
def test_expand_nodelist(nodelist: str, hosts: list[str]) -> None:
    assert expand_nodelist(nodelist) == hosts
    assert first_host(nodelist) == hosts[0]


@pytest.mark.parametrize(
    "nodelist", ["", "a,,b", "n[]", "n[1-", "n]1", "n[[1]]", "n[3-1]", "n[a-b]", "n[1-2"]
)
def test_expand_nodelist_rejects_malformed(nodelist: str) -> None:
    with pytest.raises(ValueError, match="malformed nodelist"):
        expand_nodelist(nodelist)


@pytest.mark.parametrize(
    "value, counts",
    [("2(x3),1", [2, 2, 2, 1]), ("4", [4]), ("1,3", [1, 3]), ("8(x2)", [8, 8])],
)
def test_tasks_per_node(value: str, counts: list[int]) -> None:
    assert tasks_per_node(value) == counts


def test_restart_changes_port() -> None:
    ports = [
        resolve_rank_env({**SLURM_2X2, "SLURM_RESTART_COUNT": str(r)}).master_port for r in range(5)
    ]
    assert resolve_rank_env(SLURM_2X2).master_port == ports[0]  # absent on the first run == 0
    assert len(set(ports)) == 5


def test_master_port_range_spread_and_stable() -> None:
    ports = {master_port(job, 0) for job in range(1000, 3000)}
    assert all(PORT_LO <= p < PORT_HI for p in ports)
    assert len(ports) > 1800  # consecutive job ids spread over the range (~1850 expected)
    for job in (1, 77, 123456):  # consecutive restarts never share a port, even at the wrap
        runs = [master_port(job, r) for r in range(PORT_HI - PORT_LO)]
        assert len(set(runs)) == len(runs)
    # golden: every rank (and every Python process, whatever PYTHONHASHSEED) must agree
    assert master_port(1234, 0) == 26323


def test_export_torch_env_round_trips_and_keeps_cuda_visible_devices() -> None:
    env = resolve_rank_env({**SLURM_2X2, "CUDA_VISIBLE_DEVICES": "3"})
    environ = {"CUDA_VISIBLE_DEVICES": "3", "OTHER": "x"}
    export_torch_env(env, environ)
    assert environ == {
        "CUDA_VISIBLE_DEVICES": "3",
        "OTHER": "x",
        "RANK": "3",
        "LOCAL_RANK": "0",
        "WORLD_SIZE": "4",
        "LOCAL_WORLD_SIZE": "2",
        "MASTER_ADDR": "gpu07",
        "MASTER_PORT": str(PORT_1234),
    }
    again = resolve_rank_env({**SLURM_2X2, **environ})  # what a child process would resolve
    assert (again.rank, again.local_rank, again.world_size, again.master_port) == (
        3,
        0,
        4,
        PORT_1234,
    )


def test_export_torch_env_defaults_to_os_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (
        "RANK",
        "LOCAL_RANK",
        "WORLD_SIZE",
        "LOCAL_WORLD_SIZE",
        "MASTER_ADDR",
        "MASTER_PORT",
    ):
        monkeypatch.delenv(name, raising=False)
    export_torch_env(RankEnv(1, 0, 2, 1, "n1", 23456, 1, "slurm"))
    assert (os.environ["RANK"], os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"]) == (
        "1",
        "n1",
        "23456",
    )


def test_find_free_port_is_bindable() -> None:
    port = find_free_port()
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))
