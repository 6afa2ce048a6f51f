"""The package's floor plan (issue 9): modules small enough to read whole, and the config
schema importing nothing from hpc_ppo (every other module may import it)."""

from __future__ import annotations

import ast

from helpers import REPO

PACKAGE = REPO / "hpc_ppo"
MAX_LINES = 400


def test_no_module_is_over_400_lines():
    long = {
        str(p.relative_to(REPO)): n
        for p in sorted(PACKAGE.rglob("*.py"))
        if (n := len(p.read_text().splitlines())) > MAX_LINES
    }
    assert not long, f"split these by what they do: {long}"


def test_the_config_schema_imports_nothing_from_hpc_ppo():
    tree = ast.parse((PACKAGE / "config" / "schema.py").read_text())
    imported = [
        node.module if isinstance(node, ast.ImportFrom) else alias.name
        for node in ast.walk(tree)
        if isinstance(node, (ast.Import, ast.ImportFrom))
        for alias in node.names
    ]
    assert not [m for m in imported if m and m.startswith("hpc_ppo")], imported
