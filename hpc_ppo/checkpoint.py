"""Atomic, reshardable checkpoints with torch.distributed.checkpoint (DCP).

    hpc-ppo run configs/tiny-cpu.yaml trainer.save_every=10      # step_10, step_20, ... kept 2
    hpc-ppo run RUN_DIR                                          # resume from the newest

Layout under `<run_dir>/checkpoints/`:

    step_N/              N = completed steps (the next step to run is N)
      COMPLETE           written last, by rank 0, before the rename: its presence = usable
      trainer.json       step, sampler, schedulers, MLflow run id, world size, resolved config
      rng_rank<R>.pt     every rank's python / numpy / torch / CUDA RNG states
      *.distcp, .metadata   DCP shards of models and optimizers (any world size can load them)
    step_N.tmp/          a save in progress; never loaded

Commit protocol: every rank writes into `step_N.tmp`, barrier, rank 0 writes COMPLETE (fsync)
and renames the folder (fsync of the parent), barrier. A kill at any point leaves either the
previous complete checkpoint or the new one, never a half one that looks complete.
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

from hpc_ppo.atomic import atomic_write_text, fsync_dir
from hpc_ppo.checkpoint_files import COMPLETE, checkpoint_root, complete_steps
from hpc_ppo.checkpoint_files import resolve_step as resolve_step  # ckpt.resolve_step
from hpc_ppo.checkpoint_read import ThreadedReader
from hpc_ppo.errors import ConfigError

log = logging.getLogger(__name__)


@dataclass
class Checkpointable:
    """A model with its optimizer and LR scheduler, saved under `name`."""

    name: str
    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any


@dataclass
class PendingSave:
    """An async save whose shards are still being written by DCP's background thread."""

    future: Any
    tmp: Path
    state: dict[str, Any]
    keep: int
    run_dir: Path


def save(
    run_dir: Path, step: int, parts: list[Checkpointable], trainer_state: dict[str, Any], keep: int
) -> float:
    """Collective save of everything needed to continue at `step`; returns seconds taken."""
    start = time.perf_counter()
    tmp, state = _begin(run_dir, step, parts, trainer_state)
    dcp.save(_app_state(parts), checkpoint_id=str(tmp))
    _commit(PendingSave(None, tmp, state, keep, run_dir))
    return time.perf_counter() - start


def save_async(
    run_dir: Path,
    step: int,
    parts: list[Checkpointable],
    trainer_state: dict[str, Any],
    keep: int,
    group: dist.ProcessGroup,
    writer: dcp.FileSystemWriter | None = None,
) -> tuple[float, PendingSave]:
    """Stage the state in CPU memory and write it in a background thread; returns the seconds
    training was blocked. `group` is a gloo group used by nothing else, so the writer's
    collectives never interleave with training's. `writer`: one kept across saves (its staged
    copy is reused); None: DCP's default, a fresh pageable copy each save. Call `finish`
    before the next save."""
    start = time.perf_counter()
    tmp, state = _begin(run_dir, step, parts, trainer_state)
    future = dcp.async_save(
        _app_state(parts), checkpoint_id=str(tmp), storage_writer=writer, process_group=group
    )
    return time.perf_counter() - start, PendingSave(future, tmp, state, keep, run_dir)


def finish(pending: PendingSave) -> float:
    """Wait for an async save's shards, then commit it (collective); returns seconds waited."""
    start = time.perf_counter()
    result = pending.future.result()
    if hasattr(result, "result"):  # some torch versions wrap the future once more
        result.result()
    _commit(pending)
    return time.perf_counter() - start


def _begin(
    run_dir: Path, step: int, parts: list[Checkpointable], trainer_state: dict[str, Any]
) -> tuple[Path, dict[str, Any]]:
    """Make step_N.tmp (empty), write this rank's RNG, and capture the small rank-0 state now,
    while it still describes `step` (an async save finishes later)."""
    final = checkpoint_root(run_dir) / f"step_{step}"
    tmp = final.with_name(final.name + ".tmp")
    if dist.get_rank() == 0:
        if tmp.exists():  # left by a save that was killed
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
    dist.barrier()
    torch.save(rng_state(), tmp / f"rng_rank{dist.get_rank()}.pt")
    state = {
        **trainer_state,
        "step": step,
        "world_size": dist.get_world_size(),
        "schedulers": {p.name: p.scheduler.state_dict() for p in parts},
    }
    return tmp, state


def _commit(pending: PendingSave) -> None:
    """Every rank's shards are on disk: marker, rename, prune (rank 0), between barriers."""
    dist.barrier()
    if dist.get_rank() == 0:
        tmp = pending.tmp
        final = tmp.with_name(tmp.name.removesuffix(".tmp"))
        atomic_write_text(tmp / "trainer.json", json.dumps(pending.state, indent=1))
        atomic_write_text(tmp / COMPLETE, f"{time.time()}\n", sync_dir=True)
        if final.exists():  # a re-run of the same step after a resume: replace it
            shutil.rmtree(final)
        os.replace(tmp, final)
        fsync_dir(final.parent)
        _prune(pending.run_dir, pending.keep)
    dist.barrier()


def load(path: Path, parts: list[Checkpointable], threads: int | None = None) -> dict[str, Any]:
    """Restore models, optimizers, schedulers and this rank's RNG; returns trainer.json.
    `threads`: reading threads (checkpoint_read.py; None: its default, 1: DCP's own reader)."""
    state = json.loads((path / "trainer.json").read_text())
    app = _app_state(parts)
    try:
        dcp.load(app, checkpoint_id=str(path), storage_reader=ThreadedReader(path, threads))
    # DCP reports shape mismatches deep inside its planner, wrapped in CheckpointException,
    # which derives from BaseException: `except Exception` alone lets it through.
    except (Exception, CheckpointException) as e:
        raise _load_error(path, e) from None
    for p in parts:
        set_state_dict(
            p.model,
            p.optimizer,
            model_state_dict=app[p.name]["model"],
            optim_state_dict=app[p.name]["optim"],
        )
        p.scheduler.load_state_dict(state["schedulers"][p.name])
    rng_file = path / f"rng_rank{dist.get_rank()}.pt"
    if state["world_size"] == dist.get_world_size() and rng_file.is_file():
        set_rng_state(torch.load(rng_file, weights_only=False))
    else:
        log.warning(
            "checkpoint %s was written by %d ranks, this job has %d: model and optimizer are "
            "resharded, RNG states are not restored (sampling is seeded per step anyway)",
            path,
            state["world_size"],
            dist.get_world_size(),
        )
    return state


class Checkpointer:
    """The checkpoint stage of a run: resume from the newest complete checkpoint, save after a
    step (in the background with `trainer.async_save`), and finish a pending save.

    `states` are the models with their optimizers and schedulers (update.Optimization.states);
    the caller's small state (sampler, metrics, run id, config) rides along in trainer.json.
    """

    def __init__(
        self,
        run_dir: Path,
        states: list[Checkpointable],
        keep: int,
        async_save: bool,
        pinned: bool = True,
    ) -> None:
        self.run_dir, self.states, self.keep, self.async_save = run_dir, states, keep, async_save
        self.pending: PendingSave | None = None
        # Async saves run their collectives on a group of their own (never interleaved).
        self.group = dist.new_group(backend="gloo") if async_save else None
        # trainer.async_save_pinned: one writer for the run, whose staged copy of the state is
        # pinned host memory allocated at the first save and refilled at the next (measured on
        # an H200, 12 GiB: DCP's default blocks 9.1 s at every save; this 6.8 s once, then
        # 0.26 s). Pinning needs a GPU; CPU runs keep the default.
        self.writer = (
            dcp.FileSystemWriter(checkpoint_root(run_dir), cache_staged_state_dict=True)
            if async_save and pinned and _on_gpu(states)
            else None
        )

    def resume(self, total_steps: int, warn: bool) -> dict[str, Any] | None:
        """Restore the newest complete checkpoint (if any) into `states`; its trainer.json."""
        # One listing: resolve_step would list (and warn about skipped folders) again.
        steps = complete_steps(self.run_dir, warn=warn)
        if not steps:
            return None
        path = checkpoint_root(self.run_dir) / f"step_{steps[-1]}"
        state = load(path, self.states)
        log.info("resumed from %s: %d of %d steps done", path, state["step"], total_steps)
        return state

    def save(self, done: int, trainer_state: dict[str, Any], final: bool = True) -> float:
        """Checkpoint after `done` completed steps; returns the seconds it blocked training.

        With async saves, a non-final save returns once the state is copied to CPU memory; its
        commit happens before the next save or at `finish_pending`.
        """
        self.finish_pending()
        if self.async_save and not final:
            blocked, self.pending = save_async(
                self.run_dir, done, self.states, trainer_state, self.keep, self.group, self.writer
            )
            return blocked
        return save(self.run_dir, done, self.states, trainer_state, self.keep)

    def finish_pending(self) -> None:
        if self.pending is not None:
            finish(self.pending)
            self.pending = None


def _on_gpu(states: list[Checkpointable]) -> bool:
    return any(p.device.type == "cuda" for s in states for p in s.model.parameters())


def load_model_only(path: Path, name: str, model: nn.Module) -> None:
    """Fill a plain (unsharded, single-process) model from a checkpoint: for export."""
    sd = {name: {"model": model.state_dict()}}
    try:
        dcp.load(sd, checkpoint_id=str(path), storage_reader=ThreadedReader(path), no_dist=True)
    except (Exception, CheckpointException) as e:  # DCP's is a BaseException
        raise _load_error(path, e) from None
    model.load_state_dict(sd[name]["model"])


def _app_state(parts: list[Checkpointable]) -> dict[str, Any]:
    out = {}
    for p in parts:
        model_sd, optim_sd = get_state_dict(p.model, p.optimizer)
        out[p.name] = {"model": model_sd, "optim": optim_sd}
    return out


def rng_state() -> dict[str, Any]:
    """This process's python, numpy, torch and CUDA random states (what a checkpoint keeps)."""
    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _prune(run_dir: Path, keep: int) -> None:
    for step in complete_steps(run_dir, warn=False)[:-keep]:
        shutil.rmtree(checkpoint_root(run_dir) / f"step_{step}", ignore_errors=True)


def _load_error(path: Path, e: BaseException) -> ConfigError:
    """Another model's checkpoint, or files that cannot be read (damaged, or the file system
    failed): each with its way out."""
    mismatch = _mismatch(e)
    if mismatch:
        return ConfigError(
            f"checkpoint {path} does not fit this model: {mismatch}; it was saved by a run with "
            "another model shape (check model.path / model.tiny.*), or start a new run folder"
        )
    # DCP wraps each rank's error with its traceback: the first one's own words say most.
    failures = getattr(e, "failures", None) or {}
    first = next(iter(failures.values()), None)
    cause = first[0] if isinstance(first, tuple) else e
    text = " ".join(f"{type(cause).__name__}: {cause}".split())[:300]
    return ConfigError(
        f"checkpoint {path} could not be read: {text}; if its files are damaged, move the "
        f"folder aside (mv {path} {path}.bad) and the run resumes from the checkpoint before it"
    )


def _mismatch(e: BaseException) -> str | None:
    """The shape or key mismatch in DCP's error text, if that is what it reports."""
    text = " ".join(str(e).split())
    # DCP's text: "Size mismatch between saved torch.Size([64, 64]) and current:
    # torch.Size([64, 128]) for critic.model...": the dots of torch.Size must not end the match.
    m = (
        re.search(r"[Ss]ize mismatch.*? for \S+", text)
        or re.search(r"Missing key in checkpoint state_dict: \S+", text)
        or re.search(r"mismatch sizes[^;]*", text)
    )
    return m.group(0)[:300] if m else None
