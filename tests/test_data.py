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
import torch

from hpc_ppo.data import (
    Prompt,
    PromptSampler,
    letters_reward,
    load_prompts,
    make_letters_prompts,
    shard_for_rank,
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


# ---------------------------------------------------------------- sampler


def draw(sampler: PromptSampler, n: int) -> list[list[int]]:
    return [sampler.next_indices() for _ in range(n)]


def test_sampler_epochs_are_permutations_and_reproducible():
    s = PromptSampler(num_prompts=12, batch_size=4, seed=7)
    batches = draw(s, 6)  # exactly two epochs
    assert all(len(b) == 4 for b in batches)
    epoch0 = sum(batches[:3], [])
    epoch1 = sum(batches[3:], [])
    assert sorted(epoch0) == sorted(epoch1) == list(range(12))
    assert epoch0 != epoch1  # reshuffled
    expected0 = torch.randperm(12, generator=torch.Generator().manual_seed(7)).tolist()
    expected1 = torch.randperm(12, generator=torch.Generator().manual_seed(8)).tolist()
    assert (epoch0, epoch1) == (expected0, expected1)
    assert draw(PromptSampler(12, 4, seed=7), 6) == batches
    assert draw(PromptSampler(12, 4, seed=8), 6) != batches


def test_sampler_independent_of_global_rng():
    torch.manual_seed(0)
    a = draw(PromptSampler(10, 3, seed=1), 4)
    torch.manual_seed(99)
    torch.rand(5)
    assert draw(PromptSampler(10, 3, seed=1), 4) == a


def test_sampler_batch_crossing_epoch_boundary():
    s = PromptSampler(num_prompts=10, batch_size=4, seed=0)
    batches = draw(s, 5)  # 20 indices = exactly two epochs; batch 2 crosses the boundary
    stream = sum(batches, [])
    assert sorted(stream[:10]) == sorted(stream[10:]) == list(range(10))
    assert s.state_dict()["epoch"] == 2 and s.state_dict()["position"] == 0
    perm0 = torch.randperm(10, generator=torch.Generator().manual_seed(0)).tolist()
    perm1 = torch.randperm(10, generator=torch.Generator().manual_seed(1)).tolist()
    assert batches[2] == perm0[8:] + perm1[:2]


def test_sampler_batch_larger_than_dataset():
    s = PromptSampler(num_prompts=3, batch_size=7, seed=5)
    stream = sum(draw(s, 3), [])
    assert all(sorted(stream[i : i + 3]) == [0, 1, 2] for i in range(0, 21, 3))
    assert s.state_dict()["epoch"] == 7


def test_sampler_no_shuffle_is_sequential():
    s = PromptSampler(5, 3, seed=0, shuffle=False)
    assert draw(s, 3) == [[0, 1, 2], [3, 4, 0], [1, 2, 3]]


@pytest.mark.parametrize("shuffle", [True, False])
def test_sampler_resume_continues_identically(shuffle):
    s = PromptSampler(num_prompts=13, batch_size=5, seed=11, shuffle=shuffle)
    draw(s, 5)
    state = json.loads(json.dumps(s.state_dict()))  # survives a checkpoint roundtrip
    assert set(state) >= {"epoch", "position", "seed", "num_prompts", "batch_size"}
    a = draw(s, 5)
    fresh = PromptSampler(num_prompts=13, batch_size=5, seed=999, shuffle=shuffle)
    fresh.load_state_dict(state)
    b = draw(fresh, 5)
    assert a == b
    assert draw(PromptSampler(13, 5, seed=11, shuffle=shuffle), 10)[5:] == a


def test_sampler_resume_rejects_changed_dataset():
    state = PromptSampler(10, 2, seed=0).state_dict()
    with pytest.raises(ConfigError) as err:
        PromptSampler(12, 2, seed=0).load_state_dict(state)
    msg = str(err.value)
    assert "data.path" in msg and "10 prompts" in msg and "has 12" in msg


def test_sampler_rejects_corrupt_state():
    state = {**PromptSampler(10, 2, seed=0).state_dict(), "position": 10}
    with pytest.raises(ValueError, match="corrupt sampler state"):
        PromptSampler(10, 2, seed=0).load_state_dict(state)


@pytest.mark.parametrize(
    ("num_prompts", "batch_size", "message"),
    [(0, 1, "num_prompts=0 must be >= 1"), (1, 0, "batch_size=0 must be >= 1")],
)
def test_sampler_bad_args(num_prompts, batch_size, message):
    with pytest.raises(ValueError, match=message):
        PromptSampler(num_prompts, batch_size, seed=0)


# ---------------------------------------------------------------- sharding


def test_shard_for_rank_contiguous_equal_slices():
    items = list(range(8))
    shards = [shard_for_rank(items, r, 4) for r in range(4)]
    assert shards == [[0, 1], [2, 3], [4, 5], [6, 7]]
    assert shard_for_rank(items, 0, 1) == items


def test_shard_for_rank_errors():
    with pytest.raises(ValueError, match="world_size=3"):
        shard_for_rank(list(range(8)), 0, 3)
    with pytest.raises(ValueError, match="rank=4"):
        shard_for_rank(list(range(8)), 4, 4)
