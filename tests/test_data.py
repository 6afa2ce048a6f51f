"""Tests for hpc_ppo.data: prompt files, the letters task, the sampler, rank sharding.

Run: python -m pytest tests/test_data.py -q
"""

import json
import random
import re
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from hpc_ppo.data import (
    Prompt,
    letters_reward,
    load_prompts,
    make_letters_prompts,
    validate_prompt_file,
)
from hpc_ppo.errors import ConfigError

GSM8K_TINY = Path(__file__).parent / "data" / "gsm8k_tiny.jsonl"


def write_jsonl(path: Path, rows: list) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def write_parquet(path: Path, columns: dict) -> str:
    pq.write_table(pa.table(columns), path)
    return str(path)


# ---------------------------------------------------------------- loading


def test_load_shipped_gsm8k_jsonl_skips_blank_lines():
    prompts = load_prompts(str(GSM8K_TINY), prompt_key="question")
    assert len(prompts) == 8  # the file has a blank line between rows 3 and 4
    assert prompts[0].text.startswith("Mara has 3 boxes")
    assert prompts[0].answer.endswith("#### 12")
    assert prompts[3].answer.endswith("#### 1,234")
    assert all(isinstance(p, Prompt) for p in prompts)


def test_jsonl_and_parquet_roundtrip_agree(tmp_path):
    rows = [json.loads(line) for line in GSM8K_TINY.read_text().splitlines() if line.strip()]
    parquet = write_parquet(
        tmp_path / "gsm8k_tiny.parquet",
        {"question": [r["question"] for r in rows], "answer": [r["answer"] for r in rows]},
    )
    from_jsonl = load_prompts(str(GSM8K_TINY), prompt_key="question")
    from_parquet = load_prompts(parquet, prompt_key="question")
    assert from_parquet == from_jsonl
    assert [p.text for p in from_parquet] == [r["question"] for r in rows]


def test_answer_key_none_reads_no_answers(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "hi"}, {"prompt": "yo", "answer": "x"}])
    assert load_prompts(path, answer_key=None) == [Prompt("hi", None, "p"), Prompt("yo", None, "p")]


def test_numeric_answers_become_strings(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "2+2", "answer": 4}])
    assert load_prompts(path) == [Prompt("2+2", "4", "p")]


def test_validate_prompt_file_accepts_good_and_rejects_bad(tmp_path):
    validate_prompt_file(str(GSM8K_TINY), "question", "answer")
    with pytest.raises(ConfigError, match="data.prompt_key='prompt'"):
        validate_prompt_file(str(GSM8K_TINY), "prompt", "answer")


# ---------------------------------------------------------------- loading errors


def assert_one_line(err: pytest.ExceptionInfo) -> str:
    msg = str(err.value)
    assert "\n" not in msg
    return msg


def test_missing_file(tmp_path):
    path = str(tmp_path / "nope.jsonl")
    with pytest.raises(ConfigError) as err:
        load_prompts(path)
    assert assert_one_line(err) == f"data.path={path}: file not found"


def test_directory_is_not_a_file(tmp_path):
    with pytest.raises(ConfigError, match=r"data.path=.*: is not a file"):
        load_prompts(str(tmp_path))


def test_unsupported_extension(tmp_path):
    path = tmp_path / "train.csv"
    path.write_text("prompt,answer\nhi,x\n")
    with pytest.raises(ConfigError) as err:
        load_prompts(str(path))
    msg = assert_one_line(err)
    assert f"data.path={path}" in msg and ".csv" in msg
    assert ".jsonl" in msg and ".parquet" in msg


def test_invalid_json_names_file_and_line(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_text('{"prompt": "a", "answer": "b"}\n\n{"prompt": "c" "answer": "d"}\n')
    with pytest.raises(ConfigError) as err:
        load_prompts(str(path))
    msg = assert_one_line(err)
    assert msg.startswith(f"data.path: {path}:3: invalid JSON (Expecting ',' delimiter")


def test_json_line_that_is_not_an_object(tmp_path):
    path = write_jsonl(tmp_path / "t.jsonl", [{"prompt": "a", "answer": "b"}, ["a", "b"]])
    with pytest.raises(ConfigError, match=rf"data.path: {path}:2: .*JSON object.*got list"):
        load_prompts(path)


def test_missing_prompt_key_names_line_key_and_keys_present(tmp_path):
    path = write_jsonl(tmp_path / "t.jsonl", [{"question": "q", "answer": "a"}])
    with pytest.raises(ConfigError) as err:
        load_prompts(path)
    msg = assert_one_line(err)
    assert msg.startswith("data.prompt_key='prompt'")
    assert f"{path}:1 has no key 'prompt'" in msg
    assert "(keys: question, answer)" in msg
    assert "set data.prompt_key=<one of them>" in msg


def test_missing_answer_key_suggests_keys_and_null(tmp_path):
    path = write_jsonl(
        tmp_path / "t.jsonl", [{"prompt": "p", "answer": "a"}, {"prompt": "p", "solution": "a"}]
    )
    with pytest.raises(ConfigError) as err:
        load_prompts(path)
    msg = assert_one_line(err)
    assert msg.startswith("data.answer_key='answer'")
    assert f"{path}:2 has no key 'answer' (keys: prompt, solution)" in msg
    assert "set data.answer_key=<one of them>" in msg and "data.answer_key=null" in msg


@pytest.mark.parametrize("value, type_name", [(7, "int"), (None, "null"), ({"a": 1}, "dict")])
def test_non_string_prompt(tmp_path, value, type_name):
    path = write_jsonl(tmp_path / "t.jsonl", [{"prompt": value, "answer": "a"}])
    with pytest.raises(ConfigError) as err:
        load_prompts(path)
    msg = assert_one_line(err)
    assert msg.startswith(f"data.prompt_key='prompt': {path}:1:")
    assert f"must be a string or a list of chat messages, got {type_name}" in msg


def test_chat_prompt_keeps_messages_and_drops_trailing_assistant_turns(tmp_path):
    """TRL's conversational `messages`: the last assistant turn is the reference answer."""
    chat = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello"},
    ]
    path = write_jsonl(tmp_path / "t.jsonl", [{"messages": chat, "answer": "a"}])
    (prompt,) = load_prompts(path, prompt_key="messages")
    assert prompt.text == "hi" and prompt.answer == "a"
    assert prompt.messages == tuple(chat[:2])


@pytest.mark.parametrize(
    ("chat", "problem"),
    [
        ([{"role": "user"}], "message 0 must be"),
        ([{"role": "system", "content": "x"}], "no user message with text"),
        ([], "no user message with text"),
    ],
)
def test_bad_chat_prompt_is_one_line_naming_the_row(tmp_path, chat, problem):
    path = write_jsonl(tmp_path / "t.jsonl", [{"prompt": chat, "answer": "a"}])
    with pytest.raises(ConfigError) as err:
        load_prompts(path)
    msg = assert_one_line(err)
    assert msg.startswith(f"data.prompt_key='prompt': {path}:1: ") and problem in msg


def test_bad_answer_type(tmp_path):
    path = write_jsonl(tmp_path / "t.jsonl", [{"prompt": "p", "answer": ["a"]}])
    with pytest.raises(ConfigError, match=rf"data.answer_key='answer': {path}:1: .*got list"):
        load_prompts(path)


def test_empty_file(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_text("\n\n")
    with pytest.raises(ConfigError, match=rf"data.path={path}: contains no prompts"):
        load_prompts(str(path))


def test_not_utf8(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_bytes(b'{"prompt": "\xff\xfe"}\n')
    with pytest.raises(ConfigError, match=rf"data.path={path}: not UTF-8"):
        load_prompts(str(path))


def test_parquet_missing_columns(tmp_path):
    path = write_parquet(tmp_path / "t.parquet", {"question": ["q"], "solution": ["s"]})
    with pytest.raises(ConfigError) as err:
        load_prompts(path)
    msg = assert_one_line(err)
    assert msg.startswith(f"data.prompt_key='prompt' is not a column of {path}")
    assert "(columns: question, solution)" in msg
    with pytest.raises(ConfigError, match=r"data.answer_key='answer' .*columns: question"):
        load_prompts(path, prompt_key="question")
    assert load_prompts(path, "question", "solution") == [Prompt("q", "s", "t")]


def test_parquet_bad_row_names_row(tmp_path):
    path = write_parquet(tmp_path / "t.parquet", {"prompt": ["ok", None], "answer": ["a", "b"]})
    with pytest.raises(ConfigError, match=rf"data.prompt_key='prompt': {path} row 2: .*null"):
        load_prompts(path)


def test_corrupt_parquet(tmp_path):
    path = tmp_path / "t.parquet"
    path.write_bytes(b"not a parquet file at all")
    with pytest.raises(ConfigError) as err:
        load_prompts(str(path))
    assert assert_one_line(err).startswith(f"data.path={path}: cannot read parquet (")


# ---------------------------------------------------------------- letters task


def test_letters_prompts_shape_and_determinism():
    a = make_letters_prompts(50, seed=3)
    assert a == make_letters_prompts(50, seed=3)
    assert a != make_letters_prompts(50, seed=4)
    for p in a:
        assert p.text.startswith("echo: ")
        word = p.text.removeprefix("echo: ")
        assert 3 <= len(word) <= 6 and set(word) <= set("abcdefgh")
        assert p.answer == "".join(sorted(set(word)))


def test_letters_prompts_ignore_global_rng():
    random.seed(0)
    a = make_letters_prompts(10, seed=1, alphabet="xyz", min_len=2, max_len=2)
    random.seed(123)
    assert make_letters_prompts(10, seed=1, alphabet="xyz", min_len=2, max_len=2) == a
    assert all(len(p.text) == len("echo: ") + 2 for p in a)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"num": -1}, "num=-1 must be >= 0"),
        ({"alphabet": ""}, "alphabet='' must be non-empty"),
        ({"alphabet": "a b"}, "alphabet='a b' must be non-empty, without whitespace"),
        ({"min_len": 0}, "min_len=0"),
        ({"max_len": 2}, "max_len=2"),
    ],
)
def test_letters_prompts_bad_args(kwargs, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        make_letters_prompts(**{"num": 1, "seed": 0, **kwargs})


@pytest.mark.parametrize(
    "response, expected",
    [
        ("abcdabcd", 1.0),  # all 8 in {a, b, c, d}
        ("abcdxyzw", 0.5),  # half
        ("a b c d a b c d", 1.0),  # spaces ignored
        ("abcdabcdzzzzzzzz", 1.0),  # only the first 8 count
        ("zzzzzzzzabcd", 0.0),
        ("ab", 0.25),  # short: denominator stays 8
        ("", 0.0),
        ("echoecho", 0.25),  # the "echo: " prefix is not part of the letter set; only c counts
        ("ABCDABCD", 0.0),  # case-sensitive
    ],
)
def test_letters_reward_golden(response, expected):
    assert letters_reward("echo: cabd", response, "abcd") == expected


def test_letters_reward_target_len():
    assert letters_reward("echo: ab", "abzz", None, target_len=4) == 0.5
    assert letters_reward("echo: ab", "abzz", None, target_len=2) == 1.0
    with pytest.raises(ValueError, match="target_len=0"):
        letters_reward("echo: ab", "ab", None, target_len=0)
