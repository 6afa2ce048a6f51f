"""Atomic file publication: a reader sees the old file or the whole new one, never a part.

    python -m pytest tests/test_atomic.py -q

    atomic_write_text(run_dir / "config.yaml", text)           # config, run ids, job index
    atomic_write_text(tmp / "COMPLETE", stamp, sync_dir=True)  # checkpoint markers

Protocol (submitit's): write a temporary file in the same folder (a rename is atomic only
within one file system), flush and fsync it so the data is on disk before the name is, then
rename it over the target. `sync_dir=True` also fsyncs the folder, so the new name itself
survives a crash of the node (checkpoint markers, which a resume trusts).

Tested in tests/test_atomic.py.
"""

from __future__ import annotations

import os
from pathlib import Path


def atomic_write_bytes(path: str | Path, data: bytes, *, sync_dir: bool = False) -> None:
    """Publish `data` at `path` atomically; the folder must exist."""
    path = Path(path)
    # The pid keeps two processes that publish the same file from sharing one temporary file.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())  # the data is on disk before the rename publishes it
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if sync_dir:
        fsync_dir(path.parent)


def atomic_write_text(path: str | Path, text: str, *, sync_dir: bool = False) -> None:
    """Publish `text` (UTF-8) at `path` atomically; the folder must exist."""
    atomic_write_bytes(path, text.encode("utf-8"), sync_dir=sync_dir)


def fsync_dir(path: str | Path) -> None:
    """Make the names in folder `path` (a rename, a new file) durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
