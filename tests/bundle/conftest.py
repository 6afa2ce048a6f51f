"""What tests/bundle shares: small wheels made on the spot, a bundle folder of them, install.sh
run as a node would, and a pip that sees only a folder of wheels.

Run: python -m pytest tests/bundle -q -m "not slow"
"""

from __future__ import annotations

import base64
import hashlib
import os
import subprocess
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest
from helpers import local_env

from hpc_ppo.bundle import pack


def _record_hash(data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=")
    return f"sha256={digest.decode()}"


def write_wheel(
    folder: Path,
    name: str,
    version: str = "1.0",
    tag: str = "py3-none-any",
    requires: tuple[str, ...] = (),
    payload: bytes = b"",
) -> Path:
    """A valid wheel of one module `<name>_mod` (holding `payload` as data, for size)."""
    dist = name.replace("-", "_")
    info = f"{dist}-{version}.dist-info"
    files = {
        f"{dist}_mod/__init__.py": f"VERSION = {version!r}\n".encode(),
        f"{dist}_mod/blob.bin": payload,
        f"{info}/METADATA": "".join(
            [f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"]
            + [f"Requires-Dist: {r}\n" for r in requires]
        ).encode(),
        f"{info}/WHEEL": f"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: {tag}\n".encode(),
    }
    record = "".join(f"{p},{_record_hash(d)},{len(d)}\n" for p, d in files.items())
    files[f"{info}/RECORD"] = (record + f"{info}/RECORD,,\n").encode()
    path = folder / f"{dist}-{version}-{tag}.whl"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:  # stored: payload keeps its size
        for p, d in files.items():
            zf.writestr(p, d)
    return path


@pytest.fixture
def wheel() -> Callable[..., Path]:
    """wheel(folder, name, version="1.0", tag=..., requires=(...), payload=b"") -> its path."""
    return write_wheel


@pytest.fixture
def bundle_of(tmp_path: Path) -> Callable[..., Path]:
    """bundle_of(wheels={name: payload}, python="X.Y", skipped=[...]) -> a bundle folder as
    `hpc-ppo bundle` lays it out (lock, sums, install.sh), of made-up wheels."""

    def bundle_of(
        wheels: dict[str, bytes], python: str | None = None, skipped: tuple[str, ...] = ()
    ) -> Path:
        folder = tmp_path / "bundle"
        (folder / "wheels").mkdir(parents=True)
        for name, payload in wheels.items():
            write_wheel(folder / "wheels", name, payload=payload)
        python = python or f"{sys.version_info[0]}.{sys.version_info[1]}"
        header = [f"python: {python}", *(f"skipped: {s}" for s in skipped)]
        pack.write_lock(folder, header, [f"{name}==1.0" for name in wheels])
        pack.write_sums(folder)
        pack.write_install_script(folder)
        return folder

    return bundle_of


@pytest.fixture
def install_sh() -> Callable[..., subprocess.CompletedProcess[str]]:
    """install_sh(folder, *pip_args): the bundle's install.sh with this interpreter, in an
    environment without PYTHONPATH, as on a node."""

    def install_sh(folder: Path, *args: str) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in local_env().items() if k != "PYTHONPATH"}
        env["PYTHON"] = sys.executable
        return subprocess.run(
            [str(folder / "install.sh"), *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )

    return install_sh


@pytest.fixture
def pip_sees_only(monkeypatch: pytest.MonkeyPatch) -> Callable[[Path], None]:
    """pip_sees_only(folder): pip (as resolve.py runs it) finds packages in `folder` alone: no
    index, no configured links or constraints."""

    def pip_sees_only(folder: Path) -> None:
        monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
        monkeypatch.setenv("PIP_NO_INDEX", "1")
        monkeypatch.setenv("PIP_FIND_LINKS", str(folder))
        for var in ("PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL", "PIP_CONSTRAINT"):
            monkeypatch.delenv(var, raising=False)

    return pip_sees_only
