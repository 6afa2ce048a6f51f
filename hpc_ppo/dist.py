"""torch.distributed setup for one rank, and the few collectives the trainer needs.

    hpc-ppo run configs/tiny-cpu.yaml trainer.nprocs=2     # two gloo ranks on loopback

CPU ranks use gloo; GPU ranks use NCCL for tensors and gloo for the CPU-side agreement
(stop flags, metrics), so a small CPU tensor never forces a device copy.
"""

from __future__ import annotations

import datetime
import os
import socket
from collections.abc import Callable
from typing import TypeVar

import torch
import torch.distributed as dist

from hpc_ppo.errors import PeerFailed, UserCodeError
from hpc_ppo.rank_env import RankEnv, export_torch_env

T = TypeVar("T")


def pick_device(choice: str, local_rank: int) -> torch.device:
    """`auto` -> this rank's GPU when CUDA is present, else the CPU."""
    if choice == "cuda" or (choice == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise RuntimeError("trainer.device=cuda but torch sees no GPU; use trainer.device=cpu")
        if local_rank >= torch.cuda.device_count():
            raise RuntimeError(
                f"LOCAL_RANK={local_rank} but this task sees {torch.cuda.device_count()} GPU(s) "
                f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')!r}); "
                "ask Slurm for --gpus-per-task=1 or one GPU per task per node"
            )
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


LOOPBACK = "127.0.0.1"
_listening: list[socket.socket] = []  # rank 0's bound rendezvous socket, alive with the store


def init_distributed(env: RankEnv, device: torch.device, timeout_s: int = 1800) -> None:
    export_torch_env(env)
    backend = "cpu:gloo,cuda:nccl" if device.type == "cuda" else "gloo"
    timeout = datetime.timedelta(seconds=timeout_s)
    dist.init_process_group(
        backend=backend,
        rank=env.rank,
        world_size=env.world_size,
        timeout=timeout,
        device_id=device if device.type == "cuda" else None,
        store=_loopback_store(env, timeout),
    )


def _loopback_store(env: RankEnv, timeout: datetime.timedelta) -> dist.Store | None:
    """Ranks that all run on this machine (`hpc-ppo run`: MASTER_ADDR=127.0.0.1) listen on the
    loopback interface only: torch's TCPStore binds every interface by default and gloo the
    host name's, which on a shared login node lets anyone on the network reach rank 0's store.
    None (torch's env:// rendezvous) for jobs across nodes, which must listen on the network.
    """
    if env.master_addr != LOOPBACK or env.world_size == 1:
        return None
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")  # gloo's pairs on loopback too
    os.environ.setdefault("NCCL_SOCKET_IFNAME", "lo")  # and NCCL's bootstrap
    if env.rank != 0:
        return dist.TCPStore(LOOPBACK, env.master_port, env.world_size, False, timeout)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((LOOPBACK, env.master_port))
    sock.listen(max(128, env.world_size))
    _listening.append(sock)
    return dist.TCPStore(
        LOOPBACK, env.master_port, env.world_size, True, timeout, master_listen_fd=sock.fileno()
    )


def all_reduce(values: list[float], op: str = "mean") -> list[float]:
    """Reduce a list of floats over all ranks on the CPU: "mean", "max" or "sum"."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(t, op=dist.ReduceOp.MAX if op == "max" else dist.ReduceOp.SUM)
    if op == "mean":
        t /= dist.get_world_size()
    return t.tolist()


def all_gather_1d(t: torch.Tensor) -> torch.Tensor:
    """Concatenate an equal-length 1-D CPU tensor from every rank, in rank order."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return t
    out = [torch.empty_like(t) for _ in range(dist.get_world_size())]
    dist.all_gather(out, t.contiguous())
    return torch.cat(out)


def agree_on_failure(fn: Callable[[], T]) -> T:
    """Run `fn` on every rank; if it raised UserCodeError on any rank, every rank stops
    together: that rank re-raises its error (the one report), the others raise PeerFailed.

    Without it a failing rank's exit leaves the others in their next collective, which then
    dies with a transport error (gloo "Connection closed by peer") that hides the cause.
    A collective: every rank calls it at the same point.
    """
    error: UserCodeError | None = None
    result = None
    try:
        result = fn()
    except UserCodeError as e:
        error = e
    if all_reduce([1.0 if error else 0.0], "max")[0] > 0:
        if error is not None:
            raise error
        raise PeerFailed("another rank failed; its error is the report")
    return result  # type: ignore[return-value]
