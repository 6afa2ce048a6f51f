"""A DCP reader that reads a checkpoint's tensors in several threads.

    hpc-ppo run RUN_DIR      # a requeue: the restore reads its shards in parallel

DCP's FileSystemReader reads one tensor after another in the calling thread: file read, then
`torch.load` of the slice, then the copy into the (GPU) target. The file reads and copies
release the interpreter, so threads overlap them (and leave it to vLLM's import, which runs
beside the restore: rollout/preload.py). `python bench/restore.py` on an H200 host, the 0.5B
step bench's 6.5 GB: 5.13 s with DCP's reader, 1.81 s with 8 threads (files in the page
cache); 6.32 s and 4.38 s read from disk (docs/PERFORMANCE.md). Each thread runs DCP's own
`read_data` on its share of the plan: the file format stays DCP's.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import torch
from torch.distributed.checkpoint import FileSystemReader
from torch.distributed.checkpoint.planner import LoadItemType, LoadPlan, LoadPlanner, ReadItem
from torch.futures import Future

# Past ~8 threads a node's page cache or parallel file system gives little more, and every
# rank of a node reads at once.
MAX_THREADS = 8
T = TypeVar("T")


class ThreadedReader(FileSystemReader):
    """FileSystemReader whose `read_data` splits the plan into byte-balanced runs of items (in
    file order) and reads them in `threads` threads (default: up to 8, no more than the CPUs
    this rank may use; 1 is DCP's own reader)."""

    def __init__(self, path: str | os.PathLike, threads: int | None = None) -> None:
        super().__init__(path)
        self.threads = threads or min(MAX_THREADS, usable_cpus())

    def read_data(self, plan: LoadPlan, planner: LoadPlanner) -> Future[None]:
        tensors = [it for it in plan.items if it.type != LoadItemType.BYTE_IO]
        shares = split_items(tensors, self._size_and_place, self.threads)
        if len(shares) <= 1:
            return super().read_data(plan, planner)
        read = super().read_data
        # The small non-tensor values first, here: the planner writes them into nested dicts
        # and lists of the state dict, which is not something to do from several threads.
        values = [it for it in plan.items if it.type == LoadItemType.BYTE_IO]
        read(dataclasses.replace(plan, items=values), planner).wait()
        device = torch.cuda.current_device() if torch.cuda.is_initialized() else None

        def run(items: list[ReadItem]) -> None:
            if device is not None:  # a new thread starts on GPU 0, not this rank's GPU
                torch.cuda.set_device(device)
            read(dataclasses.replace(plan, items=items), planner).wait()

        with ThreadPoolExecutor(len(shares), thread_name_prefix="dcp-read") as pool:
            for done in [pool.submit(run, share) for share in shares]:
                done.result()  # the first failure is raised, as DCP's own reader would
        done_all: Future[None] = Future()
        done_all.set_result(None)
        return done_all

    def _size_and_place(self, item: ReadItem) -> tuple[int, str, int]:
        info = self.storage_data[item.storage_index]
        return info.length, str(info.relative_path), info.offset


def usable_cpus() -> int:
    """The CPUs this process may run on (a Slurm task's share, not the node's); the count of
    the machine where the OS does not say (macOS)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def split_items(
    items: Sequence[T], size_and_place: Callable[[T], tuple[int, str, int]], parts: int
) -> list[list[T]]:
    """`items` in (file, offset) order, cut into at most `parts` runs of about equal bytes
    (`size_and_place(item)` -> (bytes, file, offset)); empty runs are left out."""
    if parts <= 1 or len(items) <= 1:
        return [list(items)] if items else []
    placed = sorted(((size_and_place(it), i) for i, it in enumerate(items)), key=lambda p: p[0][1:])
    target = sum(size for (size, _, _), _ in placed) / parts
    shares: list[list[T]] = [[]]
    filled = 0
    for (size, _, _), i in placed:
        if filled >= target * len(shares) and len(shares) < parts:
            shares.append([])
        shares[-1].append(items[i])
        filled += size
    return [s for s in shares if s]
