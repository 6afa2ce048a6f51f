"""hpc_ppo.atomic: a reader sees the old file or the whole new one, never a part; and the
files a resume trusts go through it.

Run: python -m pytest tests/test_atomic.py -q
"""

from __future__ import annotations

import os

import pytest

from hpc_ppo import atomic, provenance
from hpc_ppo.atomic import atomic_write_bytes, atomic_write_text


def test_writes_and_replaces_leaving_no_temporary_file(tmp_path):
    path = tmp_path / "f.txt"
    atomic_write_text(path, "one\n")
    atomic_write_text(path, "two\n", sync_dir=True)
    atomic_write_bytes(tmp_path / "b.bin", b"\x00\xff")
    assert path.read_text() == "two\n"
    assert (tmp_path / "b.bin").read_bytes() == b"\x00\xff"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.bin", "f.txt"]


def test_a_failed_write_keeps_the_old_file_and_removes_the_temporary(tmp_path, monkeypatch):
    path = tmp_path / "f.txt"
    path.write_text("old\n")

    def crash(fd: int) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(atomic.os, "fsync", crash)
    with pytest.raises(OSError, match="disk full"):
        atomic_write_text(path, "new\n")
    assert path.read_text() == "old\n"
    assert os.listdir(tmp_path) == ["f.txt"]


def test_code_version_is_published_atomically(tmp_path, monkeypatch):
    # Bug fixed: code_version, which a resume compares against, was a plain write_text, so a
    # crash mid-write could leave a partial version that every later start warned about.
    monkeypatch.setattr(provenance, "code_version", lambda: "0.1.0+gaaaa")
    monkeypatch.setattr(atomic.os, "fsync", lambda fd: (_ for _ in ()).throw(OSError("crash")))
    with pytest.raises(OSError):
        provenance.check_code_version(tmp_path)
    assert not (tmp_path / "code_version").exists()
