"""Offline wheel bundles: hpc-ppo and everything it needs, for a node without internet.

    hpc-ppo bundle -o B                                # for this machine's Python and platform
    hpc-ppo bundle -o B --extras gpu --python 3.12 --platform manylinux_2_39_x86_64 \\
        --skip torch==2.11.0 --split-mb 60             # for a GPU host that has its own torch
    hpc-ppo bundle -o B --extras gpu ... --node-packages node-freeze.txt   # and leave out what
                                                       # the node's `pip freeze` already holds
    B/install.sh                                       # on the node: check, then install

A bundle folder, as install.sh reads it:

    install.sh           checks, then `pip install --no-index --no-deps -r lock.txt` (its
                         arguments go to pip: `--target FOLDER`, ...)
    lock.txt             every wheel of the bundle as NAME==VERSION, after `#` lines naming the
                         target, the extras, the constraints and the command; `# python: X.Y`
                         and `# skipped: NAME==VER` are read by install.sh
    SHA256SUMS           the sha256 of every wheel (`sha256sum -c SHA256SUMS`), checked first
    wheels/              the wheels; with --split-mb N instead:
    wheels.tar.part-NNN  the tar of wheels/ cut into N-MB parts, their sums in parts.sha256

The lock is complete (install.sh installs with --no-deps, so a venv and `--target FOLDER` get
the same files): resolve.py checks every requirement of every wheel with the target's markers.
The folder is written as `.NAME.partial-PID` beside it and renamed when whole, so a failed or
killed bundle never looks like one.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

from hpc_ppo.bundle import pack
from hpc_ppo.bundle.project import build_own_wheel
from hpc_ppo.bundle.resolve import Pin, download, on_node, resolve
from hpc_ppo.bundle.target import Target, parse_extras
from hpc_ppo.errors import ConfigError
from hpc_ppo.provenance import code_version

CONSTRAINTS = Path(__file__).resolve().parents[1] / "constraints"
GPU_CONSTRAINTS = CONSTRAINTS / "gpu-cu130.txt"  # the versions proven on our GPU hosts
CPU_CONSTRAINTS = CONSTRAINTS / "cpu.txt"  # the torch the README installs on a CPU machine


@dataclass(frozen=True)
class Summary:
    """What `hpc-ppo bundle` made, for its last lines."""

    folder: Path
    wheels: int
    size: int  # bytes of wheels
    parts: int  # 0: not split
    warnings: list[str]


def default_constraints(extras: list[str]) -> Path:
    return GPU_CONSTRAINTS if "gpu" in extras else CPU_CONSTRAINTS


def check_output_folder(out: Path) -> None:
    """-o DIR: a new folder, or an empty one (a bundle never mixes with other files)."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(f"-o {out}: exists and is not an empty folder; choose a new folder")


def make_bundle(
    out: Path,
    target: Target,
    extras: str,
    constraints: Path | None,
    skip: list[Requirement],
    split_mb: int | None,
    command: str,
    node_has: dict[str, str] | None = None,
) -> Summary:
    """Make the bundle folder `out` (see the module docstring for what it holds); what
    `node_has` (--node-packages) holds at an accepted version stays out, like --skip."""
    check_output_folder(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.parent / f".{out.name}.partial-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    (staging / "wheels").mkdir(parents=True)
    try:
        own = build_own_wheel(staging / "wheels")
        chosen = parse_extras(extras, own.extras)
        if not SpecifierSet(own.requires_python).contains(target.version + ".0"):
            raise ConfigError(
                f"--python {target.version}: hpc-ppo needs Python {own.requires_python}; "
                "give the node's Python if it fits, or install a newer Python on the node"
            )
        constraints = constraints or default_constraints(chosen)
        wanted = f"{own.path}[{','.join(chosen)}]" if chosen else str(own.path)
        pins = resolve([wanted], target, [constraints], skip)
        on_node_too: list[Requirement] = []
        if node_has:
            pins, on_node_too = on_node(pins, target, node_has)
        others = [p for p in pins.values() if p.name != "hpc-ppo"]
        download(others, target, staging / "wheels")
        header = _lock_header(command, target, chosen, constraints, [*skip, *on_node_too])
        pack.write_lock(staging, header, [f"{p.name}=={p.version}" for p in pins.values()])
        pack.write_sums(staging)
        pack.write_install_script(staging)
        wheels = sorted((staging / "wheels").iterdir())
        size = sum(w.stat().st_size for w in wheels)
        parts = pack.split_wheels(staging, split_mb) if split_mb else []
        if out.exists():
            out.rmdir()  # empty, checked above
        staging.rename(out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return Summary(out, len(wheels), size, len(parts), _warnings(pins, chosen))


def _lock_header(
    command: str, target: Target, extras: list[str], constraints: Path, skip: list[Requirement]
) -> list[str]:
    """lock.txt's `#` lines: what the bundle is for; install.sh reads `python:`, `skipped:`."""
    return [
        "hpc-ppo bundle: every wheel below; install with ./install.sh (no index needed)",
        f"command: {command}",
        f"hpc-ppo: {code_version()}",
        f"target: {target.describe()}",
        f"python: {target.version}",
        f"extras: {','.join(extras) or '(none)'}",
        f"constraints: {constraints}",
        *(f"skipped: {r}" for r in skip),
    ]


def _warnings(pins: dict[str, Pin], extras: list[str]) -> list[str]:
    """A CPU bundle that took torch's CUDA build: gigabytes nobody asked for."""
    cuda = sorted(name for name in pins if name.startswith("nvidia-"))
    if "gpu" in extras or "torch" not in pins or not cuda:
        return []
    return [
        f"torch {pins['torch'].version} is a CUDA build ({len(cuda)} nvidia-* wheels in the "
        "bundle); for the CPU build let pip see PyTorch's CPU wheels: "
        "PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu hpc-ppo bundle ..."
    ]
