"""The shipped tiny sets (tests/data/verl_tiny, trl_tiny) are what their script writes, and
configs/tiny-verl.yaml loads them in either layout.

Run: python -m pytest tests/test_tiny_sets.py -q
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from hpc_ppo.config import load_config
from hpc_ppo.data import load_prompts

DATA = Path(__file__).resolve().parent / "data"
CONFIG = DATA.parents[1] / "configs" / "tiny-verl.yaml"


def _script():
    spec = importlib.util.spec_from_file_location("make_tiny_sets", DATA / "make_tiny_sets.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_committed_sets_equal_what_the_script_writes(tmp_path):
    _script().write(tmp_path)
    for layout, suffix, keys in (
        ("verl_tiny", "parquet", ("prompt", "reward_model.ground_truth")),
        ("trl_tiny", "jsonl", ("messages", "answer")),
    ):
        for split in ("train", "val"):
            name = f"{layout}/{split}.{suffix}"
            assert load_prompts(str(DATA / name), *keys) == load_prompts(
                str(tmp_path / name), *keys
            )


def test_both_layouts_give_the_same_prompts_and_sources():
    verl = load_prompts(str(DATA / "verl_tiny/val.parquet"), "prompt", "reward_model.ground_truth")
    trl = load_prompts(str(DATA / "trl_tiny/val.jsonl"), "messages", "answer")
    assert [(p.messages, p.answer, p.source) for p in verl] == [
        (p.messages, p.answer, p.source) for p in trl
    ]
    assert {p.source for p in verl} == {"synthetic/letters", "synthetic/sums"}


def test_the_config_validates_in_both_layouts(monkeypatch):
    monkeypatch.chdir(CONFIG.parents[1])  # data paths are relative to the repository
    cfg = load_config(CONFIG, launcher="local")
    assert cfg.trainer.val_every == 5 and cfg.data.answer_key == "reward_model.ground_truth"
    trl = [
        "data.path=tests/data/trl_tiny/train.jsonl",
        "data.val_path=tests/data/trl_tiny/val.jsonl",
        "data.prompt_key=messages",
        "data.answer_key=answer",
    ]
    assert load_config(CONFIG, trl, launcher="local").data.prompt_key == "messages"
