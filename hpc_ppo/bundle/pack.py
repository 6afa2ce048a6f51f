"""The files of a bundle folder besides the wheels: lock, sums, install.sh, and the parts.

    write_lock(folder, header, pins); write_sums(folder); write_install_script(folder)
    split_wheels(folder, mb=60)        # wheels/ -> wheels.tar.part-000 ... + parts.sha256

The layout they write is described in hpc_ppo/bundle/__init__.py; install.sh reads it.
"""

from __future__ import annotations

import hashlib
import math
import shutil
import tarfile
from pathlib import Path

LOCK = "lock.txt"
SUMS = "SHA256SUMS"
PART_SUMS = "parts.sha256"
PART_PREFIX = "wheels.tar.part-"
INSTALL_SH = Path(__file__).with_name("install.sh")
MB = 10**6  # --split-mb counts as transfer limits do: 60 MB = 60,000,000 bytes


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_lock(folder: Path, header: list[str], pins: list[str]) -> None:
    """lock.txt: `# header` lines, then one NAME==VERSION a line (a pip requirements file,
    usable as a constraints file elsewhere)."""
    lines = [f"# {line}" if line else "#" for line in header] + sorted(pins, key=str.lower)
    (folder / LOCK).write_text("\n".join(lines) + "\n")


def write_sums(folder: Path) -> None:
    """SHA256SUMS in `sha256sum -c` format: one `HASH  wheels/NAME` line per wheel."""
    wheels = sorted((folder / "wheels").iterdir())
    _write_sum_lines(folder, SUMS, [w.relative_to(folder) for w in wheels])


def _write_sum_lines(folder: Path, name: str, relpaths: list[Path]) -> None:
    text = "".join(f"{sha256(folder / rel)}  {rel}\n" for rel in relpaths)
    (folder / name).write_text(text)


def write_install_script(folder: Path) -> None:
    target = folder / "install.sh"
    shutil.copyfile(INSTALL_SH, target)
    target.chmod(0o755)


class _PartWriter:
    """A write-only stream cut into files of `size` bytes, for tarfile's stream mode: no
    whole tar on disk beside the parts (a GPU bundle is gigabytes)."""

    def __init__(self, folder: Path, size: int, width: int) -> None:
        self.folder, self.size, self.width = folder, size, width
        self.paths: list[Path] = []
        self._file = None
        self._left = 0

    def write(self, data: bytes) -> int:
        view = memoryview(data)
        while view:
            if self._left == 0:
                self._next()
            n = min(self._left, len(view))
            self._file.write(view[:n])  # type: ignore[union-attr]
            self._left -= n
            view = view[n:]
        return len(data)

    def _next(self) -> None:
        self.close()
        path = self.folder / f"{PART_PREFIX}{len(self.paths):0{self.width}d}"
        self.paths.append(path)
        self._file = open(path, "wb")
        self._left = self.size

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def split_wheels(folder: Path, mb: int) -> list[Path]:
    """Replace `folder/wheels` by the parts of its tar, `mb` MB each, and their sums."""
    wheels = sorted((folder / "wheels").iterdir())
    size = mb * MB
    # Enough digits for the most parts the tar can make (a 512-byte header per file, padding
    # and a tail), so that `cat wheels.tar.part-*` joins them in order.
    most = sum(w.stat().st_size + 2048 for w in wheels) + 20480
    width = max(3, len(str(math.ceil(most / size))))
    out = _PartWriter(folder, size, width)
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar:  # type: ignore[call-overload]
        for w in wheels:
            tar.add(w, arcname=f"wheels/{w.name}")
    out.close()
    shutil.rmtree(folder / "wheels")
    _write_sum_lines(folder, PART_SUMS, [p.relative_to(folder) for p in out.paths])
    return out.paths
