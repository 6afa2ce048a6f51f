"""A resumed run that executes other code than its first start says so."""

from __future__ import annotations

import logging
import shutil
import subprocess
from importlib import metadata
from pathlib import Path

import pytest
from helpers import REPO

from hpc_ppo import provenance


def test_first_start_records_and_later_changes_warn(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(provenance, "code_version", lambda: "0.1.0+gaaaa")
    assert provenance.check_code_version(tmp_path) == "0.1.0+gaaaa"
    assert (tmp_path / "code_version").read_text().strip() == "0.1.0+gaaaa"
    with caplog.at_level(logging.WARNING):
        provenance.check_code_version(tmp_path)
    assert not caplog.records  # same code: silent
    monkeypatch.setattr(provenance, "code_version", lambda: "0.1.0+gbbbb.dirty")
    with caplog.at_level(logging.WARNING):
        provenance.check_code_version(tmp_path)
    assert "started with hpc-ppo 0.1.0+gaaaa and now runs 0.1.0+gbbbb.dirty" in caplog.text
    assert (tmp_path / "code_version").read_text().strip() == "0.1.0+gaaaa"  # the first stays


def git(repo: Path, *args: str) -> str:
    """git in `repo` with a fixed identity (a CI box may have none); its stdout, stripped."""
    cmd = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@example.invalid"]
    return subprocess.run([*cmd, *args], capture_output=True, text=True, check=True).stdout.strip()


@pytest.fixture
def checkout(tmp_path, monkeypatch) -> Path:
    """A git repo with one commit of an hpc_ppo/ folder, posing as the package's checkout."""
    if shutil.which("git") is None:
        pytest.skip("needs git")
    repo = tmp_path / "repo"
    (repo / "hpc_ppo").mkdir(parents=True)
    (repo / "hpc_ppo" / "trainer.py").write_text("STEPS = 1\n")
    (repo / "README.md").write_text("docs\n")
    git(repo, "init", "-q")
    git(repo, "add", ".")
    git(repo, "commit", "-q", "-m", "first")
    monkeypatch.setattr(provenance, "PACKAGE_DIR", repo / "hpc_ppo")
    return repo


def test_code_version_names_the_commit_and_marks_package_edits_dirty(checkout):
    base = metadata.version("hpc-ppo")
    commit = git(checkout, "rev-parse", "--short=12", "HEAD")
    assert len(commit) == 12
    assert provenance.code_version() == f"{base}+g{commit}"
    # Edits outside the package and untracked files do not change the code that runs.
    (checkout / "README.md").write_text("more docs\n")
    (checkout / "hpc_ppo" / "scratch.py").write_text("x = 1\n")
    assert provenance.code_version() == f"{base}+g{commit}"
    (checkout / "hpc_ppo" / "trainer.py").write_text("STEPS = 2\n")
    assert provenance.code_version() == f"{base}+g{commit}.dirty"
    git(checkout, "commit", "-q", "-am", "second")
    assert (
        provenance.code_version() == f"{base}+g{git(checkout, 'rev-parse', '--short=12', 'HEAD')}"
    )


def test_code_version_outside_a_checkout_is_the_package_version(tmp_path, monkeypatch):
    package = tmp_path / "site-packages" / "hpc_ppo"  # an installed wheel: no .git anywhere
    package.mkdir(parents=True)
    monkeypatch.setattr(provenance, "PACKAGE_DIR", package)
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path))  # no repo above tmp_path
    assert provenance.code_version() == metadata.version("hpc-ppo")


def test_code_version_of_this_checkout_names_its_commit():
    try:
        commit = git(REPO, "rev-parse", "--short=12", "HEAD")
    except (OSError, subprocess.CalledProcessError):
        pytest.skip(f"{REPO} is not a git checkout")
    assert provenance.code_version().startswith(f"{metadata.version('hpc-ppo')}+g{commit}")
