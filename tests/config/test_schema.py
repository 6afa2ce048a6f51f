"""hpc_ppo.config.schema: the tree's shape and defaults, importable on its own.

Run: python -m pytest tests/config/test_schema.py -q
"""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

from hpc_ppo.config import schema
from hpc_ppo.config.schema import RESUMABLE_KEYS, Config, OptimConfig, SlurmConfig


def test_schema_imports_nothing_from_hpc_ppo():
    """Any module can import the tree without the loader or the rules (and their imports)."""
    tree = ast.parse(Path(schema.__file__).read_text())
    imported = [
        node.module if isinstance(node, ast.ImportFrom) else alias.name
        for node in ast.walk(tree)
        if isinstance(node, (ast.Import, ast.ImportFrom))
        for alias in node.names
    ]
    assert imported and not [m for m in imported if m and m.split(".")[0] == "hpc_ppo"]


def test_actor_and_critic_share_a_class_but_not_a_learning_rate():
    cfg = Config()
    assert type(cfg.actor) is type(cfg.critic) is OptimConfig
    assert (cfg.actor.lr, cfg.critic.lr) == (1e-6, 1e-5)


def test_slurm_world_is_one_task_per_gpu_or_one_per_cpu_node():
    assert SlurmConfig().world_size == 1
    assert SlurmConfig(nodes=2, gpus_per_node=8).world_size == 16
    assert SlurmConfig(nodes=3, tasks_per_node=4).ntasks_per_node == 4


def test_resumable_keys_are_keys_of_the_tree():
    for key in RESUMABLE_KEYS:
        section, name = key.split(".")
        assert name in {f.name for f in dataclasses.fields(getattr(Config(), section))}, key
