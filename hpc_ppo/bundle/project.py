"""hpc-ppo's own wheel, built from the source checkout this package runs from.

    hpc-ppo bundle -o B          # B/wheels/hpc_ppo-<version>-py3-none-any.whl among the others

The build runs on a copy of the files a setuptools build reads (BUILD_INPUTS), not in the
checkout: setuptools reuses `build/lib`, so a module deleted since the last build would ride
along into the wheel, and the checkout stays as it was.
"""

from __future__ import annotations

import email.parser
import importlib.util
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from hpc_ppo.errors import BundleError

SOURCE_TREE = Path(__file__).resolve().parents[2]
BUILD_INPUTS = ("pyproject.toml", "setup.cfg", "setup.py", "README.md", "MANIFEST.in", "hpc_ppo")


@dataclass(frozen=True)
class WheelInfo:
    """What a bundle needs to know of a wheel's METADATA."""

    path: Path
    name: str
    version: str
    requires_python: str
    extras: list[str]


def wheel_info(path: Path) -> WheelInfo:
    with zipfile.ZipFile(path) as zf:
        (meta,) = [n for n in zf.namelist() if n.endswith(".dist-info/METADATA")]
        msg = email.parser.Parser().parsestr(zf.read(meta).decode("utf-8"))
    return WheelInfo(
        path,
        msg["Name"],
        msg["Version"],
        msg.get("Requires-Python", ""),
        sorted(msg.get_all("Provides-Extra") or []),
    )


def build_own_wheel(dest: Path) -> WheelInfo:
    """Build hpc-ppo's wheel from SOURCE_TREE into `dest`."""
    if not (SOURCE_TREE / "setup.cfg").is_file():
        raise BundleError(
            f"hpc-ppo runs from {SOURCE_TREE / 'hpc_ppo'}, not from a source checkout: the "
            "bundle builds hpc-ppo's wheel from one; run the bundle from a checkout "
            "(pip install -e CHECKOUT, or PYTHONPATH=CHECKOUT)"
        )
    cmd = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(dest)]
    # With setuptools here, build with it: no index needed. Else pip fetches it (isolation).
    if importlib.util.find_spec("setuptools") is not None:
        cmd.append("--no-build-isolation")
    with tempfile.TemporaryDirectory(prefix="hpc-ppo-build-") as tmp:
        for name in BUILD_INPUTS:
            src = SOURCE_TREE / name
            if src.is_dir():
                shutil.copytree(src, Path(tmp) / name, ignore=shutil.ignore_patterns("__pycache__"))
            elif src.is_file():
                shutil.copy2(src, Path(tmp) / name)
        proc = subprocess.run([*cmd, tmp], capture_output=True, text=True)
    if proc.returncode != 0:
        tail = " | ".join((proc.stdout + proc.stderr).strip().splitlines()[-5:])
        raise BundleError(
            f"building hpc-ppo's wheel from {SOURCE_TREE} failed: {tail}; "
            f"try it by hand: {sys.executable} -m pip wheel --no-deps -w /tmp/w {SOURCE_TREE}"
        )
    (path,) = dest.glob("hpc_ppo-*.whl")
    return wheel_info(path)
