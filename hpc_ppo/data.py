"""Prompts in: prompt files (jsonl, parquet; verl and TRL layouts), the synthetic "letters" task.

    hpc-ppo validate configs/tiny-cpu.yaml data.path=train.jsonl data.prompt_key=question

Plain functions over plain arguments; the trainer wires them to the config. A prompt file is
checked before anything starts by `hpc-ppo validate cfg.yaml` (through `validate_prompt_file`).

Prompt files: `.jsonl` (one JSON object per line, blank lines skipped) or `.parquet`, one file
or a list (read in order, concatenated). Each row holds:
  - the prompt (`data.prompt_key`, default "prompt"): a string, or a list of chat messages
    ({"role": ..., "content": ...}: verl's parquet and TRL's conversational layout; trailing
    assistant turns, TRL's `messages` reference answers, are dropped) rendered with the
    model's chat template;
  - the ground truth (`data.answer_key`, default "answer"; null for none), a dotted path for a
    nested field (verl: `reward_model.ground_truth`);
  - optionally `data_source` (verl's column; else the file's name without extension): picks
    the row's reward (`reward.by_source`) and names its validation metrics; and `extra_info`
    (a mapping), passed to user rewards that ask for it.

The "letters" task is a synthetic task for smoke tests and CPU demos. A prompt reads
"echo: cabd"; the reward (`letters_reward`) is the fraction of the first 8 non-space response
characters that are letters of the prompt's word ("a", "b", "c", "d" here). A random-init tiny
model emits mostly other characters (reward near 0.1); it can climb to 1.0 by learning to emit
only letters it has just read, so learning is measurable within minutes on a CPU.

Which prompts a step takes: sampler.py.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hpc_ppo.config import DataConfig
from hpc_ppo.errors import ConfigError

if TYPE_CHECKING:  # transformers is slow to import; `hpc-ppo validate` needs none of it
    from transformers import PreTrainedTokenizerBase

SUPPORTED_EXTENSIONS = (".jsonl", ".parquet")
SOURCE_KEY, EXTRA_KEY = "data_source", "extra_info"  # verl's column names
LETTERS_PREFIX = "echo: "


@dataclass(frozen=True)
class Prompt:
    text: str  # the prompt string; for chat messages, the last user message's content
    answer: str | None  # ground truth for the reward; None for tasks without one
    source: str = ""  # data_source, or the file's stem; "" for the synthetic task
    extra_info: dict | None = None
    messages: tuple[dict, ...] | None = None  # a chat-format prompt, rendered with the template


# ---------------------------------------------------------------- prompt files


def load_prompts(
    paths: str | list[str],
    prompt_key: str = "prompt",
    answer_key: str | None = "answer",
    field: str = "data.path",
) -> list[Prompt]:
    """Read prompts from .jsonl / .parquet files, in order; every bad input is a one-line
    ConfigError naming `field` (data.path or data.val_path)."""
    prompts: list[Prompt] = []
    for path in [paths] if isinstance(paths, str) else paths:
        prompts += _load_file(path, prompt_key, answer_key, field)
    return prompts


def _load_file(path: str, prompt_key: str, answer_key: str | None, field: str) -> list[Prompt]:
    p = Path(path)
    if not p.exists():
        raise ConfigError(f"{field}={path}: file not found")
    if not p.is_file():
        raise ConfigError(f"{field}={path}: is not a file")
    suffix = p.suffix.lower()
    if suffix not in SUPPORTED_EXTENSIONS:
        raise ConfigError(
            f"{field}={path}: unsupported file type '{p.suffix}'; "
            f"use one of {', '.join(SUPPORTED_EXTENSIONS)}"
        )
    rows = (
        _jsonl_rows(p, field)
        if suffix == ".jsonl"
        else _parquet_rows(p, prompt_key, answer_key, field)
    )
    prompts = [_to_prompt(row, where, prompt_key, answer_key, p.stem) for where, row in rows]
    if not prompts:
        raise ConfigError(f"{field}={path}: contains no prompts")
    return prompts


def validate_prompt_file(
    paths: str | list[str],
    prompt_key: str = "prompt",
    answer_key: str | None = "answer",
    field: str = "data.path",
) -> list[Prompt]:
    """The checks of `load_prompts`, for `hpc-ppo validate`; raises ConfigError. Returns the
    prompts (their count and sources are checked against other keys)."""
    # Simplification: validating reads the whole file; fine for prompt sets (MBs, not GBs).
    return load_prompts(paths, prompt_key, answer_key, field)


def _jsonl_rows(path: Path, field: str) -> Iterator[tuple[str, Any]]:
    try:
        with path.open(encoding="utf-8") as f:
            for lineno, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                where = f"{path}:{lineno}"
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as e:
                    raise ConfigError(
                        f"{field}: {where}: invalid JSON ({e.msg} at column {e.colno})"
                    ) from None
                if not isinstance(row, dict):
                    raise ConfigError(
                        f"{field}: {where}: expected one JSON object per line, "
                        f"got {_type_name(row)}"
                    )
                yield where, row
    except UnicodeDecodeError as e:
        raise ConfigError(f"{field}={path}: not UTF-8 text ({_one_line(e)})") from None


def _parquet_rows(
    path: Path, prompt_key: str, answer_key: str | None, field: str
) -> Iterator[tuple[str, Any]]:
    import pyarrow.parquet as pq  # only parquet users pay for the import

    try:
        names = pq.read_schema(path).names
    except Exception as e:  # pyarrow raises several types for a bad file
        raise ConfigError(
            f"{field}={path}: cannot read parquet ({type(e).__name__}: {_one_line(e)})"
        ) from None
    wanted = [("data.prompt_key", prompt_key)]
    if answer_key is not None:
        wanted.append(("data.answer_key", answer_key))
    columns = []
    for key_field, key in wanted:
        column = key if key in names else key.partition(".")[0]  # a nested field's column
        if column not in names:
            raise ConfigError(
                f"{key_field}={key!r} is not a column of {path} "
                f"(columns: {', '.join(names) or 'none'}); set {key_field}=<one of them>"
            )
        columns.append(column)
    columns += [c for c in (SOURCE_KEY, EXTRA_KEY) if c in names and c not in columns]
    table = pq.read_table(path, columns=list(dict.fromkeys(columns)))
    for i, row in enumerate(table.to_pylist(), start=1):
        yield f"{path} row {i}", row


def _to_prompt(row: dict, where: str, prompt_key: str, answer_key: str | None, stem: str) -> Prompt:
    text, messages = _prompt_of(row, where, prompt_key)
    source = row.get(SOURCE_KEY)
    source = source if isinstance(source, str) and source.strip() else stem
    extra = row.get(EXTRA_KEY)
    extra = extra if isinstance(extra, dict) else None
    if answer_key is None:
        return Prompt(text, None, source, extra, messages)
    answer = _field(row, answer_key, where, "data.answer_key")
    # Numbers are accepted as ground truth ({"answer": 42}); rewards compare strings.
    if isinstance(answer, (int, float)) and not isinstance(answer, bool):
        answer = str(answer)
    if not isinstance(answer, str):
        raise ConfigError(
            f"data.answer_key={answer_key!r}: {where}: the answer must be a string or a "
            f"number, got {_type_name(answer)}"
        )
    return Prompt(text, answer, source, extra, messages)


def _prompt_of(row: dict, where: str, key: str) -> tuple[str, tuple[dict, ...] | None]:
    """(text, messages) of a row's prompt: a string, or chat messages (text: the last user
    message's content)."""
    value = _field(row, key, where, "data.prompt_key")
    if isinstance(value, list):
        return _messages_of(value, where, key)
    if not isinstance(value, str):
        raise ConfigError(
            f"data.prompt_key={key!r}: {where}: the prompt must be a string or a list of chat "
            f"messages, got {_type_name(value)}"
        )
    if not value.strip():
        raise ConfigError(
            f"data.prompt_key={key!r}: {where}: the prompt is empty; remove the row or "
            "fill in its prompt"
        )
    return value, None


def _messages_of(value: list, where: str, key: str) -> tuple[str, tuple[dict, ...]]:
    for i, m in enumerate(value):
        if not (
            isinstance(m, dict)
            and isinstance(m.get("role"), str)
            and isinstance(m.get("content"), str)
        ):
            raise ConfigError(
                f"data.prompt_key={key!r}: {where}: message {i} must be "
                f'{{"role": str, "content": str}}, got {_cut(repr(m), 60)}'
            )
    messages = [{"role": m["role"], "content": m["content"]} for m in value]
    while messages and messages[-1]["role"] == "assistant":  # TRL `messages`: the reference
        messages.pop()
    users = [m["content"] for m in messages if m["role"] == "user"]
    if not users or not users[-1].strip():
        raise ConfigError(
            f"data.prompt_key={key!r}: {where}: the chat prompt has no user message with text;"
            " remove the row or give it one"
        )
    return users[-1], tuple(messages)


def _field(row: dict, key: str, where: str, key_field: str) -> Any:
    """row[key], or a nested field by dotted path (reward_model.ground_truth)."""
    if key in row:
        return row[key]
    node: Any = row
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            message = _missing_key(key_field, key, where, node if isinstance(node, dict) else {})
            if key_field == "data.answer_key":
                message += " (or data.answer_key=null for a task without answers)"
            raise ConfigError(message)
        node = node[part]
    return node


def _missing_key(field: str, key: str, where: str, row: dict) -> str:
    keys = ", ".join(map(str, row)) or "none"
    return f"{field}={key!r}: {where} has no key {key!r} (keys: {keys}); set {field}=<one of them>"


def _type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split())


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


# ---------------------------------------------------------------- the letters task


def make_letters_prompts(
    num: int, seed: int, alphabet: str = "abcdefgh", min_len: int = 3, max_len: int = 6
) -> list[Prompt]:
    """`num` prompts "echo: <word>", words drawn with replacement from `alphabet`.

    The answer is the word's distinct letters, sorted ("echo: cabd" -> "abcd"). Deterministic
    for a seed, and independent of the global RNG.
    """
    if num < 0:
        raise ValueError(f"num={num} must be >= 0")
    if not alphabet or any(c.isspace() for c in alphabet):
        raise ValueError(f"alphabet={alphabet!r} must be non-empty, without whitespace")
    if not 1 <= min_len <= max_len:
        raise ValueError(f"need 1 <= min_len <= max_len, got min_len={min_len} max_len={max_len}")
    rng = random.Random(seed)
    prompts = []
    for _ in range(num):
        word = "".join(rng.choices(alphabet, k=rng.randint(min_len, max_len)))
        prompts.append(Prompt(text=LETTERS_PREFIX + word, answer="".join(sorted(set(word)))))
    return prompts


def letters_reward(prompt: str, response: str, answer: str | None, target_len: int = 8) -> float:
    """Fraction of the first `target_len` non-space response characters found in the prompt word.

    The denominator is always `target_len`, so a short response is penalised and an empty one
    scores 0.0. The letter set comes from the prompt (after "echo: "); `answer` holds the same
    set for generated prompts and is not needed.
    """
    if target_len < 1:
        raise ValueError(f"target_len={target_len} must be >= 1")
    letters = {c for c in prompt.removeprefix(LETTERS_PREFIX) if not c.isspace()}
    chars = [c for c in response if not c.isspace()][:target_len]
    return sum(c in letters for c in chars) / target_len


def task_prompts(data: DataConfig, seed: int) -> list[Prompt]:
    """The run's prompts: `data.path`'s file, or the synthetic task when it is null."""
    if data.path is not None:
        return load_prompts(data.path, data.prompt_key, data.answer_key)
    s = data.synthetic
    return make_letters_prompts(s.num_prompts, seed, min_len=s.min_len, max_len=s.max_len)


def encode_prompt(
    tokenizer: PreTrainedTokenizerBase, prompt: Prompt, chat_template: bool, max_tokens: int
) -> list[int]:
    """Token ids of a prompt, cut from the left: chat messages always go through the
    tokenizer's chat template, a string prompt when `data.chat_template` asks."""
    if prompt.messages is None and not chat_template:
        return list(tokenizer(prompt.text, add_special_tokens=False)["input_ids"])[-max_tokens:]
    if not getattr(tokenizer, "chat_template", None):
        raise ConfigError(
            "the model's tokenizer has no chat template, needed for "
            + ("chat-format prompts" if prompt.messages else "data.chat_template=true")
            + "; use a chat model or store prompts as plain strings with data.chat_template=false"
        )
    messages = list(prompt.messages or [{"role": "user", "content": prompt.text}])
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])[-max_tokens:]
