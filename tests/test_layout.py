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


def test_the_launchers_config_check_imports_no_torch(tmp_path):
    """`hpc-ppo run/submit/validate` check the config in the launcher's own process before any
    rank starts; importing torch there cost 5-8 s of every start on a GPU node."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from hpc_ppo.config import load_config\n"
        "from hpc_ppo.run_folder import new_run_dir, resume_config\n"
        "import hpc_ppo.cli, hpc_ppo.launch.local, hpc_ppo.launch.commands\n"
        f"cfg = load_config({str(REPO / 'configs' / 'tiny-cpu.yaml')!r}, "
        f"['trainer.output_dir={tmp_path}'], launcher='local')\n"
        "run = new_run_dir(cfg, 'x.yaml')\n"
        "resume_config(run, ['trainer.total_steps=9'])\n"
        "print(sorted(m for m in ('torch', 'transformers', 'mlflow') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]", out.stdout
