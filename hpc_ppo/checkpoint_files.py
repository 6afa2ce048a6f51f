"""The checkpoint folders of a run (checkpoint.py has the layout): which steps are complete,
without torch, so a starting rank can look before its imports (prefetch.py)."""

from __future__ import annotations

import logging
import re
from pathlib import Path

from hpc_ppo.errors import ConfigError

log = logging.getLogger("hpc_ppo.checkpoint")  # the checkpoint stage's messages, one logger
COMPLETE = "COMPLETE"
_STEP_DIR = re.compile(r"^step_(\d+)$")


def checkpoint_root(run_dir: Path) -> Path:
    return run_dir / "checkpoints"


def complete_steps(run_dir: Path, warn: bool = True) -> list[int]:
    """Steps with a complete checkpoint, ascending; partial folders are skipped with a warning."""
    root = checkpoint_root(run_dir)
    if not root.is_dir():
        return []
    steps = []
    for path in sorted(root.iterdir()):
        m = _STEP_DIR.match(path.name)
        if m and (path / COMPLETE).is_file() and (path / "trainer.json").is_file():
            steps.append(int(m.group(1)))
        elif warn and path.is_dir():
            missing = [f for f in (COMPLETE, "trainer.json") if not (path / f).is_file()]
            why = (
                f"no {' and no '.join(missing)}" if m else "not a step_N folder (a save cut short?)"
            )
            log.warning("skipping checkpoint folder %s: incomplete (%s)", path, why)
    return sorted(steps)


def resolve_step(run_dir: Path, step: int | None) -> Path:
    """The folder of `step`, or of the newest complete checkpoint when `step` is None."""
    steps = complete_steps(run_dir)
    if not steps:
        raise ConfigError(f"{checkpoint_root(run_dir)}: no complete checkpoint")
    if step is None:
        step = steps[-1]
    elif step not in steps:
        raise ConfigError(f"--step {step} not found: {checkpoint_root(run_dir)} has steps {steps}")
    return checkpoint_root(run_dir) / f"step_{step}"
