"""Read-ahead of the files a starting rank will read, while it imports.

    thread = prefetch_for_start(run_dir, cfg, env)   # rank.py, before torch is imported

A requeued job often lands on another node: its checkpoint, and on a first start the model's
weights, then come from the shared file system, not from the page cache (bench/restore.py on
an H200 host: the 0.5B restore 1.81 s cached, 4.38 s evicted). A thread reads them once into
a reusable buffer, holding no interpreter lock while it waits on the disk, during the ~10 s of
imports before the model build and the restore read them again, from memory. (posix_fadvise
WILLNEED is no substitute: Linux reads only the device's read-ahead window per call, 8 MiB of
a 6 GB checkpoint on this machine.) What is read is bounded by half the memory the node has
available, shared by its ranks: beyond that, read-ahead would evict what it read before
anybody used it.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from pathlib import Path

from hpc_ppo.checkpoint_files import checkpoint_root, complete_steps
from hpc_ppo.config import BUILTIN_TINY_MODEL, Config
from hpc_ppo.rank_env import RankEnv

log = logging.getLogger(__name__)
MEMORY_SHARE = 0.5  # of MemAvailable, at most
CHUNK = 64 << 20  # bytes per read: few enough reads that handing the lock back costs nothing


def prefetch_for_start(run_dir: Path, cfg: Config, env: RankEnv) -> threading.Thread | None:
    """Start reading ahead what this rank's start-up reads; None when there is nothing to read
    (or no os.preadv on this platform)."""
    try:
        files = start_files(run_dir, cfg, env.rank, env.world_size, env.local_rank)
    except (OSError, ValueError) as e:  # a damaged checkpoint: the restore says what it is
        log.debug("no read-ahead: %s", e)
        return None
    if not hasattr(os, "preadv"):
        return None
    available = available_memory()
    files = within_budget(files, available and available // env.local_world_size)
    return start_read_ahead(files) if files else None


def start_read_ahead(files: list[Path]) -> threading.Thread:
    """read_ahead(files) in a daemon thread (it never delays the rank's exit)."""
    thread = threading.Thread(target=read_ahead, args=(files,), name="prefetch", daemon=True)
    thread.start()
    return thread


def start_files(
    run_dir: Path, cfg: Config, rank: int, world_size: int, local_rank: int
) -> list[Path]:
    """The model weights the start-up loads (once per node: local rank 0; not on a resume,
    which builds the trained models without them, unless a reference model loads them), then
    this rank's checkpoint shards: its own files when the world size is the checkpoint's, all
    of them when it reshards."""
    steps = complete_steps(run_dir, warn=False)
    files: list[Path] = []
    if local_rank == 0 and (not steps or cfg.algo.kl_coef > 0):
        for path in {cfg.model.path, cfg.model.critic_path or cfg.model.path}:
            if path != BUILTIN_TINY_MODEL and Path(path).is_dir():
                files += sorted(Path(path).glob("*.safetensors"))
    if steps:
        step_dir = checkpoint_root(run_dir) / f"step_{steps[-1]}"
        saved_by = json.loads((step_dir / "trainer.json").read_text()).get("world_size")
        pattern = f"__{rank}_*.distcp" if saved_by == world_size else "*.distcp"
        files += [step_dir / ".metadata", *sorted(step_dir.glob(pattern))]
    return files


def within_budget(files: list[Path], available: int | None) -> list[Path]:
    """The leading files whose sizes add up to MEMORY_SHARE of `available` bytes (all of them
    when the available memory is unknown)."""
    if available is None:
        return files
    budget, kept = MEMORY_SHARE * available, []
    for f in files:
        size = f.stat().st_size if f.is_file() else 0
        if size > budget:
            break
        budget -= size
        kept.append(f)
    return kept


def read_ahead(files: list[Path], chunk: int = CHUNK) -> None:
    """Read each file once, into one reused buffer: the page cache keeps what was read."""
    buffer = bytearray(chunk)
    for f in files:
        try:
            fd = os.open(f, os.O_RDONLY)
        except OSError:  # gone meanwhile (pruned): the restore reports what it misses
            continue
        try:
            offset = 0
            while n := os.preadv(fd, [buffer], offset):
                offset += n
        except OSError as e:  # a read error: the restore meets it again and reports it
            log.debug("read-ahead of %s stopped: %s", f, e)
        finally:
            os.close(fd)


def available_memory() -> int | None:
    """MemAvailable of /proc/meminfo in bytes; None where there is none."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None
