"""`hpc-ppo doctor`'s bytecode check on packages written here: compiled, compiling at their
first import, or compiled again at every start (and the fix it names).

Run: python -m pytest tests/test_doctor_bytecode.py -q
"""

from __future__ import annotations

import compileall
import os
import sys
from pathlib import Path

import pytest

from hpc_ppo import doctor_bytecode
from hpc_ppo.doctor_bytecode import check_bytecode, installed, survey


@pytest.fixture
def package(tmp_path) -> Path:
    """A package of three modules, none compiled."""
    root = tmp_path / "site" / "bigpkg"
    (root / "sub").mkdir(parents=True)
    for f in ("__init__.py", "sub/__init__.py", "sub/mod.py"):
        (root / f).write_text("X = 1\n")
    return root


def test_a_compiled_package_is_ok(package):
    assert compileall.compile_dir(package, quiet=1)
    check = check_bytecode({"bigpkg": package}, dont_write=True)
    assert (check.status, check.message) == ("ok", "modules with .pyc: bigpkg 3/3")


def test_uncompiled_but_writable_compiles_once(package):
    check = check_bytecode({"bigpkg": package}, dont_write=False)
    assert check.status == "ok"
    assert check.message == (
        "modules with .pyc: bigpkg 0/3; bigpkg compile at their first import, then keep it"
    )


def test_uncompiled_and_no_writing_is_a_warning_with_the_fix(package):
    check = check_bytecode({"bigpkg": package}, dont_write=True)
    assert check.status == "warning"
    assert check.message.startswith(
        "bigpkg: 3 of 3 modules have no .pyc (PYTHONDONTWRITEBYTECODE is set): every start"
    )
    assert "PYTHONPYCACHEPREFIX" in check.message
    assert f"python -m compileall -q {package.parent}" in check.message


def test_uncompiled_in_a_read_only_folder_is_a_warning(package, monkeypatch):
    """root can write anywhere, so the folder's permission is what os.access answers."""
    read_only = {str(package)}
    monkeypatch.setattr(doctor_bytecode.os, "access", lambda p, mode: str(p) not in read_only)
    check = check_bytecode({"bigpkg": package}, dont_write=False)
    assert check.status == "warning"
    assert f"({package} is not writable)" in check.message  # __pycache__ not made yet


def test_a_few_uncompilable_modules_do_not_count(package):
    assert compileall.compile_dir(package, quiet=1)
    for i in range(3):  # 3 of 30 modules: files pip could not compile, or never imported
        (package / f"extra{i}.py").write_text("X = 1\n")
    for i in range(24):
        (package / f"done{i}.py").write_text("X = 1\n")
    assert compileall.compile_dir(package, quiet=1)
    for i in range(3):
        os.remove(doctor_bytecode.importlib.util.cache_from_source(str(package / f"extra{i}.py")))
    assert survey("bigpkg", package, dont_write=True).missing == 3
    assert check_bytecode({"bigpkg": package}, dont_write=True).status == "ok"


def test_the_prefix_folder_is_where_it_looks(package, tmp_path, monkeypatch):
    """With PYTHONPYCACHEPREFIX (sys.pycache_prefix) the .pyc beside the sources do not count,
    as for the import system: the fix's folder, once filled, makes the check ok."""
    assert compileall.compile_dir(package, quiet=1)
    monkeypatch.setattr(sys, "pycache_prefix", str(tmp_path / "pycache"))
    assert check_bytecode({"bigpkg": package}, dont_write=True).status == "warning"
    assert compileall.compile_dir(package, quiet=1)  # written under the prefix
    assert check_bytecode({"bigpkg": package}, dont_write=True).status == "ok"


def test_installed_finds_folders_without_importing(monkeypatch, package):
    monkeypatch.syspath_prepend(str(package.parent))
    assert installed(["bigpkg", "no_such_package_here"]) == {"bigpkg": package}
    assert "bigpkg" not in sys.modules
