"""hpc_ppo.config.reference: the README's table lists every key with its real default.

Run: python -m pytest tests/config/test_reference.py -q
"""

from __future__ import annotations

import yaml

from hpc_ppo.config import Config, to_dict
from hpc_ppo.config.reference import reference


def test_reference_lists_every_leaf_key(leaves):
    rows = {key: (default, doc) for key, default, doc in reference()}
    for key in ("actor.lr", "critic.lr", "model.tiny.hidden_size", "algo.value_clip"):
        assert key in rows
    assert rows["critic.lr"][0] == "1.0e-05"
    assert rows["actor.lr"][0] == "1.0e-06"
    assert rows["critic.lr"][0] != rows["actor.lr"][0]
    assert rows["model.tiny.hidden_size"][0] == "64"
    assert rows["actor.betas"][0] == "[0.9, 0.999]"
    assert rows["trainer.run_name"][0] == "null"
    assert "one of ppo, grpo" in rows["algo.name"][1]
    # every section's every field, nested sections expanded
    assert len(rows) == len(leaves(to_dict(Config())))


def test_reference_defaults_parse_back_to_the_real_defaults(leaves):
    flat = leaves(to_dict(Config()))
    for key, default, _ in reference():
        assert yaml.safe_load(default) == flat[key], key
