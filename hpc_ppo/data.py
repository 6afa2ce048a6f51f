"""Prompts in, index batches out: prompt files, the synthetic "letters" task, the sampler.

    hpc-ppo validate configs/tiny-cpu.yaml data.path=train.jsonl data.prompt_key=question

Plain functions over plain arguments; the trainer wires them to the config. A prompt file is
checked before anything starts by `hpc-ppo validate cfg.yaml` (through `validate_prompt_file`).

Prompt files: `.jsonl` (one JSON object per line, blank lines skipped) or `.parquet`, with a
string prompt field (`data.prompt_key`, default "prompt") and, for tasks scored against a
ground truth, an answer field (`data.answer_key`, default "answer"; null for none).

The "letters" task is a synthetic task for smoke tests and CPU demos. A prompt reads
"echo: cabd"; the reward (`letters_reward`) is the fraction of the first 8 non-space response
characters that are letters of the prompt's word ("a", "b", "c", "d" here). A random-init tiny
model emits mostly other characters (reward near 0.1); it can climb to 1.0 by learning to emit
only letters it has just read, so learning is measurable within minutes on a CPU.

The sampler (`PromptSampler`) yields the global batch of prompt indices for each step; every
rank computes the same list and takes its slice with `shard_for_rank`. Its state is two
integers (epoch, position), saved with each checkpoint so a requeued job continues the same
index stream.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from hpc_ppo.config import DataConfig
from hpc_ppo.errors import ConfigError

if TYPE_CHECKING:  # transformers is slow to import; `hpc-ppo validate` needs none of it
    from transformers import PreTrainedTokenizerBase

SUPPORTED_EXTENSIONS = (".jsonl", ".parquet")
LETTERS_PREFIX = "echo: "


@dataclass(frozen=True)
class Prompt:
    text: str
    answer: str | None  # ground truth for the reward; None for tasks without one


# ---------------------------------------------------------------- prompt files


def load_prompts(
    path: str, prompt_key: str = "prompt", answer_key: str | None = "answer"
) -> list[Prompt]:
    """Read prompts from a .jsonl or .parquet file; every bad input is a one-line ConfigError."""
    p = Path(path)
    if not p.exists():
        raise ConfigError(f"data.path={path}: file not found")
    if not p.is_file():
        raise ConfigError(f"data.path={path}: is not a file")
    suffix = p.suffix.lower()
    if suffix not in SUPPORTED_EXTENSIONS:
        raise ConfigError(
            f"data.path={path}: unsupported file type '{p.suffix}'; "
            f"use one of {', '.join(SUPPORTED_EXTENSIONS)}"
        )
    rows = _jsonl_rows(p) if suffix == ".jsonl" else _parquet_rows(p, prompt_key, answer_key)
    prompts = [_to_prompt(row, where, prompt_key, answer_key) for where, row in rows]
    if not prompts:
        raise ConfigError(f"data.path={path}: contains no prompts")
    return prompts


def validate_prompt_file(
    path: str, prompt_key: str = "prompt", answer_key: str | None = "answer"
) -> int:
    """The checks of `load_prompts`, for `hpc-ppo validate`; raises ConfigError. Returns the
    number of prompts."""
    # Simplification: validating reads the whole file; fine for prompt sets (MBs, not GBs).
    return len(load_prompts(path, prompt_key, answer_key))


def _jsonl_rows(path: Path) -> Iterator[tuple[str, Any]]:
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
                        f"data.path: {where}: invalid JSON ({e.msg} at column {e.colno})"
                    ) from None
                if not isinstance(row, dict):
                    raise ConfigError(
                        f"data.path: {where}: expected one JSON object per line, "
                        f"got {_type_name(row)}"
                    )
                yield where, row
    except UnicodeDecodeError as e:
        raise ConfigError(f"data.path={path}: not UTF-8 text ({_one_line(e)})") from None


def _parquet_rows(path: Path, prompt_key: str, answer_key: str | None) -> Iterator[tuple[str, Any]]:
    import pyarrow.parquet as pq  # only parquet users pay for the import

    try:
        names = pq.read_schema(path).names
    except Exception as e:  # pyarrow raises several types for a bad file
        raise ConfigError(
            f"data.path={path}: cannot read parquet ({type(e).__name__}: {_one_line(e)})"
        ) from None
    wanted = [("data.prompt_key", prompt_key)]
    if answer_key is not None:
        wanted.append(("data.answer_key", answer_key))
    for field, key in wanted:
        if key not in names:
            raise ConfigError(
                f"{field}={key!r} is not a column of {path} "
                f"(columns: {', '.join(names) or 'none'}); set {field}=<one of them>"
            )
    table = pq.read_table(path, columns=[key for _, key in wanted])
    for i, row in enumerate(table.to_pylist(), start=1):
        yield f"{path} row {i}", row


def _to_prompt(row: dict, where: str, prompt_key: str, answer_key: str | None) -> Prompt:
    if prompt_key not in row:
        raise ConfigError(_missing_key("data.prompt_key", prompt_key, where, row))
    text = row[prompt_key]
    if isinstance(text, list):
        raise ConfigError(
            f"data.prompt_key={prompt_key!r}: {where}: chat-format prompts (a list of "
            f"messages) are not supported yet; store the prompt as a plain string field"
        )
    if not isinstance(text, str):
        raise ConfigError(
            f"data.prompt_key={prompt_key!r}: {where}: the prompt must be a string, "
            f"got {_type_name(text)}"
        )
    if not text.strip():
        raise ConfigError(
            f"data.prompt_key={prompt_key!r}: {where}: the prompt is empty; remove the row or "
            "fill in its prompt"
        )
    if answer_key is None:
        return Prompt(text=text, answer=None)
    if answer_key not in row:
        raise ConfigError(
            _missing_key("data.answer_key", answer_key, where, row)
            + " (or data.answer_key=null for a task without answers)"
        )
    answer = row[answer_key]
    # Numbers are accepted as ground truth ({"answer": 42}); rewards compare strings.
    if isinstance(answer, (int, float)) and not isinstance(answer, bool):
        answer = str(answer)
    if not isinstance(answer, str):
        raise ConfigError(
            f"data.answer_key={answer_key!r}: {where}: the answer must be a string or a "
            f"number, got {_type_name(answer)}"
        )
    return Prompt(text=text, answer=answer)


def _missing_key(field: str, key: str, where: str, row: dict) -> str:
    keys = ", ".join(map(str, row)) or "none"
    return f"{field}={key!r}: {where} has no key {key!r} (keys: {keys}); set {field}=<one of them>"


def _type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split())


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


# ---------------------------------------------------------------- sampling


class PromptSampler:
    """Global batches of prompt indices, reshuffled per epoch, resumable from `state_dict`.

    Epoch e's order is a permutation from a torch.Generator seeded with seed + e, so it is
    reproducible and independent of the global RNG (which vLLM re-seeds). A batch that crosses
    an epoch boundary takes the rest of the epoch, then continues into the next permutation:
    no prompt is dropped, none repeats within an epoch. batch_size > num_prompts wraps epochs.
    """

    def __init__(self, num_prompts: int, batch_size: int, seed: int, shuffle: bool = True):
        if num_prompts < 1:
            raise ValueError(f"num_prompts={num_prompts} must be >= 1")
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size} must be >= 1")
        self.num_prompts = num_prompts
        self.batch_size = batch_size
        self.seed = seed
        self.shuffle = shuffle
        self.epoch = 0
        self.position = 0  # index into the current epoch's permutation
        self._order = self._permutation(0)

    def _permutation(self, epoch: int) -> list[int]:
        if not self.shuffle:
            return list(range(self.num_prompts))
        g = torch.Generator().manual_seed(self.seed + epoch)
        return torch.randperm(self.num_prompts, generator=g).tolist()

    def next_indices(self) -> list[int]:
        """The global batch for the next step; identical on every rank."""
        out: list[int] = []
        while len(out) < self.batch_size:
            take = min(self.batch_size - len(out), self.num_prompts - self.position)
            out.extend(self._order[self.position : self.position + take])
            self.position += take
            if self.position == self.num_prompts:
                self.epoch += 1
                self.position = 0
                self._order = self._permutation(self.epoch)
        return out

    def state_dict(self) -> dict:
        return {
            "epoch": self.epoch,
            "position": self.position,
            "seed": self.seed,
            "shuffle": self.shuffle,
            "num_prompts": self.num_prompts,
            "batch_size": self.batch_size,
        }

    def load_state_dict(self, state: dict) -> None:
        """Continue the saved index stream exactly.

        seed and shuffle are restored (they define the current epoch's order); batch_size stays
        the constructor's, since the position is per prompt, not per batch.
        """
        if state["num_prompts"] != self.num_prompts:
            raise ConfigError(
                f"data.path: the checkpoint's sampler was saved with {state['num_prompts']} "
                f"prompts but the dataset now has {self.num_prompts}; the dataset changed, "
                f"so resume with the original file or start a fresh run"
            )
        if not 0 <= state["position"] < self.num_prompts or state["epoch"] < 0:
            raise ValueError(f"corrupt sampler state: {state}")
        self.seed = state["seed"]
        self.shuffle = state.get("shuffle", True)
        self.epoch = state["epoch"]
        self.position = state["position"]
        self._order = self._permutation(self.epoch)


def task_prompts(data: DataConfig, seed: int) -> list[Prompt]:
    """The run's prompts: `data.path`'s file, or the synthetic task when it is null."""
    if data.path is not None:
        return load_prompts(data.path, data.prompt_key, data.answer_key)
    s = data.synthetic
    return make_letters_prompts(s.num_prompts, seed, min_len=s.min_len, max_len=s.max_len)


def encode_prompt(
    tokenizer: PreTrainedTokenizerBase, text: str, chat_template: bool, max_tokens: int
) -> list[int]:
    """Token ids of a prompt (through the chat template when asked), cut from the left."""
    if chat_template:
        ids = tokenizer.apply_chat_template(
            [{"role": "user", "content": text}], add_generation_prompt=True, tokenize=True
        )
    else:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return list(ids)[-max_tokens:]


def shard_for_rank(items: list, rank: int, world_size: int) -> list:
    """This rank's contiguous, equal slice of a global batch."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank={rank} must be in [0, world_size={world_size})")
    if len(items) % world_size:
        raise ValueError(
            f"cannot split {len(items)} items evenly over world_size={world_size}; "
            f"make the global batch a multiple of the number of ranks"
        )
    n = len(items) // world_size
    return items[rank * n : (rank + 1) * n]
