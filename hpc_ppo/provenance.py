"""Which code a run executes: a requeued job runs whatever the checkout holds at restart.

    hpc-ppo --version                       # the version this module computes

The first start of a run records the version in `<run_dir>/code_version`; every later start
compares and warns when it differs, and the MLflow tag `code.version` shows the current one.
"""

from __future__ import annotations

import logging
import subprocess
from importlib import metadata
from pathlib import Path

from hpc_ppo.atomic import atomic_write_text

log = logging.getLogger(__name__)
PACKAGE_DIR = Path(__file__).resolve().parent


def _git(*args: str) -> str:
    """`git ARGS` in the checkout holding this package; raises outside one (or without git)."""
    return subprocess.run(
        ["git", "-C", str(PACKAGE_DIR.parent), *args],
        capture_output=True,
        text=True,
        timeout=10,
        check=True,
    ).stdout.strip()


def code_version() -> str:
    """`<package version>` plus, in a git checkout, `+g<commit>[.dirty]`."""
    try:
        version = metadata.version("hpc-ppo")
    except metadata.PackageNotFoundError:
        version = "unknown"
    try:
        commit = _git("rev-parse", "--short=12", "HEAD")
        dirty = _git("status", "--porcelain", "--untracked-files=no", "--", "hpc_ppo")
    except (OSError, subprocess.SubprocessError):
        return version  # an installed wheel, or no git on the node
    return f"{version}+g{commit}{'.dirty' if dirty else ''}"


def git_commit() -> str | None:
    """The full commit of the checkout this package runs from (MLflow's
    `mlflow.source.git.commit`); None outside a git checkout."""
    try:
        return _git("rev-parse", "HEAD") or None
    except (OSError, subprocess.SubprocessError):
        return None


def check_code_version(run_dir: Path) -> str:
    """Record the version on a run's first start; warn on a later start that runs other code."""
    current = code_version()
    path = run_dir / "code_version"
    if not path.is_file():
        atomic_write_text(path, current + "\n")  # a resume reads it
    elif (first := path.read_text().strip()) != current:
        log.warning(
            "this run started with hpc-ppo %s and now runs %s: the checkout changed since; "
            "results may differ from an uninterrupted run",
            first,
            current,
        )
    return current
