"""`hpc-ppo doctor`'s bytecode check: do torch, transformers and vllm start from compiled
bytecode (.pyc), or does every rank compile their sources again at each start?

A read-only install without .pyc files (a container image built with `pip install
--no-compile`, a shared venv owned by someone else, `PYTHONDONTWRITEBYTECODE=1`) makes every
start of every rank compile thousands of modules: on the lent H200 host, whose torch install
compiles at every start (why was not checked), 5.4 s of a requeue's start (docs/PERFORMANCE.md,
seventh lease). The check walks the packages' folders without importing them (~0.3 s for
torch and transformers).
"""

from __future__ import annotations

import importlib.util
import os
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from hpc_ppo.doctor_env import existing_base
from hpc_ppo.doctor_node import Check

PACKAGES = ("torch", "transformers", "vllm")
UNCOMPILED_SHARE = 0.1  # above this share of modules without .pyc a package counts as uncompiled
FIX = (
    "export PYTHONPYCACHEPREFIX to a folder the job can write (e.g. $HOME/.cache/pycache; the"
    " first start fills it) and unset PYTHONDONTWRITEBYTECODE in the job, or run `python -m"
    " compileall -q {root}` as the install's owner"
)


@dataclass(frozen=True)
class Bytecode:
    """One package's modules, how many lack a .pyc where this interpreter looks for it, and
    why the missing ones cannot be written (None: they will be, at their first import)."""

    name: str
    root: Path
    modules: int
    missing: int
    unwritable: str | None


def installed(names: Iterable[str] = PACKAGES) -> dict[str, Path]:
    """The installed packages' folders, found without importing them."""
    found = {}
    for name in names:
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.submodule_search_locations:
            found[name] = Path(next(iter(spec.submodule_search_locations)))
    return found


def survey(name: str, root: Path, dont_write: bool) -> Bytecode:
    """Count `root`'s modules whose .pyc (at importlib's place: __pycache__, or under
    sys.pycache_prefix) is missing, and say why they could not be written."""
    modules = missing = 0
    for folder, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if d != "__pycache__"]
        for f in files:
            if f.endswith(".py"):
                modules += 1
                missing += not os.path.exists(importlib.util.cache_from_source(f"{folder}/{f}"))
    unwritable = None
    if missing and dont_write:
        unwritable = "PYTHONDONTWRITEBYTECODE is set"
    elif missing:
        target = existing_base(Path(importlib.util.cache_from_source(str(root / "__init__.py"))))
        if not os.access(target, os.W_OK):
            unwritable = f"{target} is not writable"
    return Bytecode(name, root, modules, missing, unwritable)


def check_bytecode(
    packages: Mapping[str, Path] | None = None, dont_write: bool | None = None
) -> Check:
    """ok when the packages have their .pyc files or will write them at the first import; a
    warning naming the package, the reason and the fix when every start compiles them."""
    packages = installed() if packages is None else packages
    dont_write = sys.dont_write_bytecode if dont_write is None else dont_write
    surveys = [survey(name, root, dont_write) for name, root in packages.items()]
    uncompiled = [s for s in surveys if s.missing > UNCOMPILED_SHARE * s.modules]
    stuck = [s for s in uncompiled if s.unwritable]
    if stuck:
        facts = "; ".join(
            f"{s.name}: {s.missing:,} of {s.modules:,} modules have no .pyc ({s.unwritable})"
            for s in stuck
        )
        return Check(
            "bytecode",
            "warning",
            f"{facts}: every start of every rank compiles them again (seconds per start); "
            + FIX.format(root=" ".join(sorted({str(s.root.parent) for s in stuck}))),
        )
    if not surveys:
        return Check("bytecode", "ok", f"none of {', '.join(PACKAGES)} installed")
    text = ", ".join(f"{s.name} {s.modules - s.missing:,}/{s.modules:,}" for s in surveys)
    later = [s.name for s in uncompiled]
    tail = f"; {', '.join(later)} compile at their first import, then keep it" if later else ""
    return Check("bytecode", "ok", f"modules with .pyc: {text}{tail}")
