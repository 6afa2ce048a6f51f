"""Prompt files in verl's and TRL's layouts, and several files at once (data.py).

Run: python -m pytest tests/test_data_formats.py -q
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from hpc_ppo.config import load_config
from hpc_ppo.data import Prompt, encode_prompt, load_prompts
from hpc_ppo.errors import ConfigError
from hpc_ppo.model import tiny_tokenizer

USER = {"role": "user", "content": "echo: abc"}


def verl_parquet(path: Path, sources=("openai/gsm8k", "lighteval/MATH")) -> str:
    """verl's layout (examples/data_preprocess/gsm8k.py): chat prompt, nested ground truth."""
    rows = [
        {
            "data_source": source,
            "prompt": [USER],
            "ability": "math",
            "reward_model": {"style": "rule", "ground_truth": str(i)},
            "extra_info": {"split": "train", "index": i},
        }
        for i, source in enumerate(sources)
    ]
    pq.write_table(pa.Table.from_pylist(rows), path)
    return str(path)


def test_verl_parquet_loads_unchanged(tmp_path):
    path = verl_parquet(tmp_path / "train.parquet")
    prompts = load_prompts(path, "prompt", "reward_model.ground_truth")
    assert prompts == [
        Prompt("echo: abc", "0", "openai/gsm8k", {"split": "train", "index": 0}, (USER,)),
        Prompt("echo: abc", "1", "lighteval/MATH", {"split": "train", "index": 1}, (USER,)),
    ]


def test_trl_conversational_jsonl_and_a_list_of_files(tmp_path):
    a = tmp_path / "a.jsonl"
    a.write_text(json.dumps({"prompt": [USER], "solution": "7"}) + "\n")
    b = tmp_path / "b.jsonl"
    b.write_text(json.dumps({"prompt": "x", "solution": "8", "data_source": "mine"}) + "\n")
    assert load_prompts([str(a), str(b)], "prompt", "solution") == [
        Prompt("echo: abc", "7", "a", None, (USER,)),  # no data_source: the file's stem
        Prompt("x", "8", "mine"),
    ]


def test_a_nested_key_missing_names_the_keys_at_its_level(tmp_path):
    path = verl_parquet(tmp_path / "t.parquet")
    with pytest.raises(ConfigError) as e:
        load_prompts(path, "prompt", "reward_model.truth", field="data.val_path")
    assert str(e.value) == (
        f"data.answer_key='reward_model.truth': {path} row 1 has no key 'reward_model.truth'"
        " (keys: style, ground_truth); set data.answer_key=<one of them>"
        " (or data.answer_key=null for a task without answers)"
    )
    with pytest.raises(ConfigError, match=rf"data.val_path={tmp_path}/x.jsonl: file not found"):
        load_prompts([path, str(tmp_path / "x.jsonl")], "prompt", None, "data.val_path")


def test_chat_prompts_go_through_the_chat_template():
    tok = tiny_tokenizer()
    chat = Prompt("echo: abc", None, messages=(USER,))
    assert tok.decode(encode_prompt(tok, chat, False, 256)) == "user: echo: abc assistant: "
    plain = Prompt("echo: abc", None)
    assert tok.decode(encode_prompt(tok, plain, False, 256)) == "echo: abc"
    assert encode_prompt(tok, plain, True, 256) == encode_prompt(tok, chat, False, 256)


def test_a_tokenizer_without_a_chat_template_is_a_config_error():
    tok = tiny_tokenizer()
    tok.chat_template = None
    with pytest.raises(ConfigError, match="no chat template, needed for chat-format prompts"):
        encode_prompt(tok, Prompt("x", None, messages=(USER,)), False, 8)


def test_validate_reads_every_file_of_data_path(tmp_path):
    path = verl_parquet(tmp_path / "t.parquet")
    cfg = load_config(
        None,
        [
            f"data.path=[{path}, {path}]",
            "data.answer_key=reward_model.ground_truth",
            "trainer.batch_size=4",
            "algo.mini_batch_size=4",
        ],
    )
    assert cfg.data.path == [path, path]
    with pytest.raises(ConfigError, match=r"holds 4 prompts, fewer than trainer.batch_size=8"):
        load_config(
            None,
            [
                f"data.path=[{path}, {path}]",
                "data.answer_key=reward_model.ground_truth",
                "trainer.batch_size=8",
            ],
        )
