"""Rank environment: rank, local rank, world size and rendezvous address of this process.

Used by every rank (hpc_ppo.dist sets up the process group from it) and by the launchers
(which must not leak these variables into the jobs they start: LAUNCHER_VARS).

Every rank calls this before `torch.distributed.init_process_group("env://")` and before vLLM
starts, so that both read the same RANK / LOCAL_RANK / WORLD_SIZE / MASTER_ADDR / MASTER_PORT:

    env = resolve_rank_env()   # torchrun-style env, else an srun step, else a single process
    export_torch_env(env)

srun sets none of the torch variables, so under Slurm they are derived from SLURM_* here
(pure Python: no `scontrol` call per rank). Run `python -m hpc_ppo.rank_env` under srun to
see what each task resolves.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import socket
from collections.abc import Mapping, MutableMapping
from dataclasses import asdict, dataclass

# Rendezvous ports: below Linux's default ephemeral range (32768-60999), so no outgoing
# connection of the node can hold the port (seen: EADDRINUSE on a requeue with 20000-60000).
PORT_LO, PORT_HI = 20000, 32768
# Variables of a torchrun-style launcher: resolve_rank_env prefers them over SLURM_*, so a job
# must not inherit them from the shell that submitted it (sbatch scripts unset them).
LAUNCHER_VARS = (
    "RANK",
    "LOCAL_RANK",
    "WORLD_SIZE",
    "LOCAL_WORLD_SIZE",
    "MASTER_ADDR",
    "MASTER_PORT",
    "GROUP_RANK",
)

_TORCHRUN_VARS = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


@dataclass(frozen=True)
class RankEnv:
    rank: int
    local_rank: int
    world_size: int
    local_world_size: int
    master_addr: str
    master_port: int
    node_rank: int
    source: str  # "torchrun-style env", "slurm", "single"

    def __post_init__(self) -> None:
        if not 0 <= self.rank < self.world_size:
            raise ValueError(
                f"rank={self.rank} not in [0, world_size={self.world_size}) ({self.source})"
            )
        if not 0 <= self.local_rank < self.local_world_size:
            raise ValueError(
                f"local_rank={self.local_rank} not in [0, local_world_size={self.local_world_size})"
                f" ({self.source})"
            )


def _int(environ: Mapping[str, str], name: str, default: int | None = None) -> int:
    """Integer value of `name`; a missing or malformed value is an error that names it."""
    value = environ.get(name)
    if value is None or value.strip() == "":
        if default is None:
            raise ValueError(f"{name} is not set (needed to resolve the rank environment)")
        return default
    if not re.fullmatch(r"\s*-?\d+\s*", value):  # int() alone would accept "1_000"
        raise ValueError(f"{name}={value!r} is not an integer")
    return int(value)


def expand_nodelist(nodelist: str) -> list[str]:
    """Expand a Slurm hostlist (`gpu[01-03,07],cpu5` -> gpu01 gpu02 gpu03 gpu07 cpu5).

    Same order as `scontrol show hostnames`: items left to right, and within an item with several
    bracket groups (`rack[1-2]-n[1-2]`) the leftmost group varies slowest. Ranges keep the
    zero-padding of their lower bound.
    """
    hosts: list[str] = []
    for item in _split_top_level(nodelist):
        expanded = [""]
        for m in re.finditer(r"([^\[\]]*)(?:\[([^\[\]]*)\])?", item):
            choices = [""] if m[2] is None else _expand_group(m[2], nodelist)
            expanded = [h + m[1] + c for h in expanded for c in choices]
        hosts.extend(expanded)
    return hosts


def first_host(nodelist: str) -> str:
    """First host of a Slurm hostlist: where rank 0 of an srun step runs."""
    return expand_nodelist(_split_top_level(nodelist)[0])[0]


def _split_top_level(nodelist: str) -> list[str]:
    """Split on commas that are outside brackets; reject unbalanced or empty items."""
    items, depth, start = [], 0, 0
    for i, ch in enumerate(nodelist):
        depth += {"[": 1, "]": -1}.get(ch, 0)
        if depth not in (0, 1):
            raise ValueError(f"malformed nodelist {nodelist!r}: unbalanced or nested brackets")
        if ch == "," and depth == 0:
            items.append(nodelist[start:i])
            start = i + 1
    items.append(nodelist[start:])
    if depth != 0 or any(not item.strip() for item in items):
        raise ValueError(f"malformed nodelist {nodelist!r}")
    return [item.strip() for item in items]


def _expand_group(group: str, nodelist: str) -> list[str]:
    out: list[str] = []
    for part in group.split(","):
        m = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", part)
        if not m or (m[2] is not None and int(m[2]) < int(m[1])):
            raise ValueError(f"malformed nodelist {nodelist!r}: bad range {part!r}")
        lo, hi = m[1], m[2] if m[2] is not None else m[1]
        out.extend(str(i).zfill(len(lo)) for i in range(int(lo), int(hi) + 1))
    return out


def tasks_per_node(value: str) -> list[int]:
    """Expand SLURM_TASKS_PER_NODE (`2(x3),1` -> [2, 2, 2, 1])."""
    out: list[int] = []
    for part in value.split(","):
        m = re.fullmatch(r"\s*(\d+)\s*(?:\(x(\d+)\))?\s*", part)
        if not m:
            raise ValueError(f"malformed tasks-per-node value {value!r}")
        out.extend([int(m[1])] * int(m[2] or 1))
    return out


def master_port(job_id: int, restart: int) -> int:
    """Rendezvous port for one run of a job, in [PORT_LO, PORT_HI).

    Jobs spread by a stable hash of the id (not Python's salted hash(): every rank must agree);
    each restart of a requeued job steps to the next port, so it never rebinds the previous run's
    port, which may still be in TIME_WAIT on the master node.
    """
    span = PORT_HI - PORT_LO
    digest = hashlib.blake2b(str(job_id).encode(), digest_size=8).digest()
    return PORT_LO + (int.from_bytes(digest, "big") + restart) % span


def find_free_port() -> int:
    """A TCP port free right now on 127.0.0.1 (racy by nature; fine for one local process)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _visible_devices(environ: Mapping[str, str]) -> list[str] | None:
    """Entries of CUDA_VISIBLE_DEVICES, or None when it does not restrict this task's GPUs."""
    value = environ.get("CUDA_VISIBLE_DEVICES")
    if value is None or value.strip() in ("", "NoDevFiles"):
        return None
    return [d.strip() for d in value.split(",") if d.strip()]


def _slurm_local_rank(environ: Mapping[str, str]) -> int:
    """Index of this task's GPU among the GPUs it sees (what vLLM and torch.cuda use)."""
    local_id = _int(environ, "SLURM_LOCALID", 0)
    devices = _visible_devices(environ)
    if devices is None:  # CPU node, or the task sees every GPU of the node
        return local_id
    if len(devices) == 1:  # Slurm bound one GPU to this task (--gpus-per-task=1)
        return 0
    if local_id >= len(devices):
        raise ValueError(
            f"SLURM_LOCALID={local_id} but CUDA_VISIBLE_DEVICES={environ['CUDA_VISIBLE_DEVICES']!r}"
            f" lists only {len(devices)} device(s), so this task has no GPU of its own: bind one"
            " GPU per task with --gpus-per-task=1, or let every task see the node's GPUs with"
            " --gpus-per-node=<tasks per node>"
        )
    return local_id


def _from_slurm(environ: Mapping[str, str]) -> RankEnv:
    world = _int(environ, "SLURM_NTASKS" if "SLURM_NTASKS" in environ else "SLURM_NPROCS")
    node_rank = _int(environ, "SLURM_NODEID", 0)
    # The step's layout first: SLURM_NTASKS_PER_NODE is inherited from the batch job and is
    # stale for an srun with another layout (measured: `srun -n3` in a 2x2 job still shows 2).
    for name in ("SLURM_STEP_TASKS_PER_NODE", "SLURM_TASKS_PER_NODE", "SLURM_NTASKS_PER_NODE"):
        if environ.get(name):
            counts = tasks_per_node(environ[name])
            local_world = counts[node_rank] if node_rank < len(counts) else counts[-1]
            break
    else:
        local_world = world  # simplification: no layout given means one node
    nodelist = environ.get("SLURM_STEP_NODELIST") or environ.get("SLURM_JOB_NODELIST")
    if not nodelist:
        raise ValueError("SLURM_STEP_NODELIST and SLURM_JOB_NODELIST are both unset")
    if environ.get("MASTER_PORT"):
        port = _int(environ, "MASTER_PORT")
    else:  # SLURM_RESTART_COUNT is absent on a job's first run
        port = master_port(_int(environ, "SLURM_JOB_ID"), _int(environ, "SLURM_RESTART_COUNT", 0))
    return RankEnv(
        rank=_int(environ, "SLURM_PROCID"),
        local_rank=_slurm_local_rank(environ),
        world_size=world,
        local_world_size=local_world,
        master_addr=first_host(nodelist),
        master_port=port,
        node_rank=node_rank,
        source="slurm",
    )


def resolve_rank_env(environ: Mapping[str, str] | None = None) -> RankEnv:
    """Rank environment from (a) torch's variables, (b) an srun step, (c) nothing: one process.

    (a) wins so that torchrun and our local launcher work inside a Slurm allocation too. A batch
    script has SLURM_PROCID=0 but no SLURM_STEP_ID: it is not a rank, so it falls to (c).
    """
    environ = os.environ if environ is None else environ
    if all(environ.get(name) for name in _TORCHRUN_VARS):
        rank, local_world = _int(environ, "RANK"), _int(environ, "LOCAL_WORLD_SIZE", 1)
        return RankEnv(
            rank=rank,
            local_rank=_int(environ, "LOCAL_RANK", 0),
            world_size=_int(environ, "WORLD_SIZE"),
            local_world_size=local_world,
            master_addr=environ["MASTER_ADDR"],
            master_port=_int(environ, "MASTER_PORT"),
            node_rank=_int(environ, "GROUP_RANK", rank // max(local_world, 1)),
            source="torchrun-style env",
        )
    if "SLURM_PROCID" in environ and "SLURM_STEP_ID" in environ:
        return _from_slurm(environ)
    port = _int(environ, "MASTER_PORT") if environ.get("MASTER_PORT") else find_free_port()
    return RankEnv(0, 0, 1, 1, "127.0.0.1", port, 0, "single")


def export_torch_env(env: RankEnv, environ: MutableMapping[str, str] | None = None) -> None:
    """Publish `env` as the variables torch.distributed (env://) and vLLM (LOCAL_RANK) read.

    CUDA_VISIBLE_DEVICES is deliberately left alone, unlike submitit's
    TorchDistributedEnvironment().export(), which sets it to the local rank: that breaks a task
    that Slurm already bound to one GPU (its only device is then hidden), and vLLM indexes
    CUDA_VISIBLE_DEVICES with LOCAL_RANK, so the two must stay consistent.
    """
    environ = os.environ if environ is None else environ
    environ.update(
        RANK=str(env.rank),
        LOCAL_RANK=str(env.local_rank),
        WORLD_SIZE=str(env.world_size),
        LOCAL_WORLD_SIZE=str(env.local_world_size),
        MASTER_ADDR=env.master_addr,
        MASTER_PORT=str(env.master_port),
    )


if __name__ == "__main__":
    print(json.dumps(asdict(resolve_rank_env())))
