"""Reward functions: the user contract, the built-ins, and how `reward.fn` is resolved.

A reward function scores one response:

    fn(prompt: str, response: str, answer: str | None) -> float

`answer` is the ground truth read from `data.answer_key` (None when the task has none). A user
reward is any importable function with that signature, for example in my_pkg/rewards.py:

    def score(prompt: str, response: str, answer: str | None) -> float:
        return 1.0 if answer is not None and answer in response else 0.0

and in the experiment YAML (or `reward.fn=my_pkg.rewards:score` on the command line):

    reward.fn: "my_pkg.rewards:score"

Built-ins, by name: "exact_match", "gsm8k", "letters" (see `BUILTIN_REWARDS`). The trainer
resolves the name once with `resolve_reward_fn` (so `hpc-ppo validate` catches a typo) and
scores each step's responses with `score_samples` (the score stage), on the rank that
generated them.

    hpc-ppo run configs/tiny-cpu.yaml reward.fn=letters     # every step scores its samples
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import math
import numbers
import re
from collections.abc import Callable, Sequence

from hpc_ppo.data import Prompt, letters_reward
from hpc_ppo.errors import ConfigError, UserCodeError
from hpc_ppo.rollout.base import Sample

RewardFn = Callable[[str, str, str | None], float]

# After "####": an optional sign, digits, an optional decimal part ("$" and "," removed first).
_NUMBER = re.compile(r"\s*(-?(?:\d+(?:\.\d+)?|\.\d+))")


def exact_match(prompt: str, response: str, answer: str | None) -> float:
    """1.0 if the response equals the answer, ignoring surrounding whitespace and a final '.'."""
    if answer is None:
        raise ValueError("exact_match needs a ground-truth answer; set data.answer_key")
    return 1.0 if _normalise(response) == _normalise(answer) else 0.0


def _normalise(s: str) -> str:
    s = s.strip()
    return s[:-1].rstrip() if s.endswith(".") else s


def gsm8k(prompt: str, response: str, answer: str | None) -> float:
    """1.0 if the number after the response's last '####' equals the ground truth's.

    Strict: a response without '#### <number>' scores 0.0 (no guessing from the last number in
    the text). Numbers compare numerically after dropping ',' and '$', so "#### 1,234" ==
    "1234" and "#### 5.0" == "5". A ground truth without '####' is read as a bare number.
    """
    if answer is None:
        raise ValueError("gsm8k needs a ground-truth answer; set data.answer_key")
    truth = extract_gsm8k_number(answer) if "####" in answer else _parse_number(answer)
    if truth is None:
        raise ValueError(f"gsm8k: no number in the ground-truth answer {answer!r}")
    got = extract_gsm8k_number(response)
    return 1.0 if got is not None and got == truth else 0.0


def extract_gsm8k_number(text: str) -> float | None:
    """The number right after the last '####' in `text`, or None."""
    _, sep, tail = text.rpartition("####")
    return _parse_number(tail) if sep else None


def _parse_number(text: str) -> float | None:
    m = _NUMBER.match(text.replace(",", "").replace("$", ""))
    return float(m.group(1)) if m else None


BUILTIN_REWARDS: dict[str, RewardFn] = {
    "exact_match": exact_match,
    "gsm8k": gsm8k,
    "letters": letters_reward,
}


def resolve_reward_fn(spec: str) -> RewardFn:
    """A built-in name ("gsm8k") or "pkg.module:function"; every failure is a ConfigError."""
    key = f"reward.fn={spec}"
    if ":" not in spec:
        if spec in BUILTIN_REWARDS:
            return BUILTIN_REWARDS[spec]
        close = difflib.get_close_matches(spec, BUILTIN_REWARDS, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(
            f"{key}: unknown built-in reward{hint}; use one of "
            f"{', '.join(BUILTIN_REWARDS)} or 'pkg.module:function'"
        )

    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ConfigError(f"{key}: expected 'pkg.module:function', e.g. my_pkg.rewards:score")
    try:
        module = importlib.import_module(module_name)
    except Exception as e:  # ImportError, or whatever the module raises while importing
        raise ConfigError(
            f"{key}: cannot import module {module_name!r} ({type(e).__name__}: "
            f"{_one_line(e)}); check it is installed or on PYTHONPATH"
        ) from None

    fn = module
    for part in attr.split("."):  # "module:Class.method" works too
        if not hasattr(fn, part):
            names = [n for n in dir(module) if not n.startswith("_")]
            close = difflib.get_close_matches(part, names, n=1)
            hint = f"; did you mean {module_name}:{close[0]}?" if close else ""
            raise ConfigError(f"{key}: module {module_name!r} has no attribute {attr!r}{hint}")
        fn = getattr(fn, part)
    if not callable(fn):
        raise ConfigError(
            f"{key}: {attr!r} is a {type(fn).__name__}, not a function; point reward.fn at "
            f"a function fn(prompt, response, answer) -> float"
        )
    try:
        inspect.signature(fn).bind("prompt", "response", None)
    except TypeError:
        raise ConfigError(
            f"{key}: {attr}{inspect.signature(fn)} cannot be called as "
            f"fn(prompt, response, answer); give it those three parameters"
        ) from None
    except ValueError:  # no signature available (some C functions): trust the user
        pass
    return fn


def score_batch(
    fn: RewardFn,
    prompts: Sequence[str],
    responses: Sequence[str],
    answers: Sequence[str | None],
) -> list[float]:
    """fn over each (prompt, response, answer); each score must be a finite real number.

    Simplification: one process, sequential. Rewards that call out to sandboxes or models
    should batch or parallelise inside `fn`'s own module.
    """
    if not len(prompts) == len(responses) == len(answers):
        raise ValueError(
            f"score_batch: {len(prompts)} prompts, {len(responses)} responses and "
            f"{len(answers)} answers; they must be equal"
        )
    name = _fn_name(fn)
    scores = []
    for i, (p, r, a) in enumerate(zip(prompts, responses, answers, strict=True)):
        try:
            value = fn(p, r, a)
        except Exception as e:
            raise UserCodeError(
                f"reward fn {name} raised on item {i}: {type(e).__name__}: {_one_line(e)}"
                f" (prompt {_excerpt(p)}, response {_excerpt(r)})"
            ) from e
        # bool is a Real; True/False become 1.0/0.0 through float().
        if not isinstance(value, numbers.Real) or not math.isfinite(float(value)):
            raise UserCodeError(
                f"reward fn {name} returned {_cut(repr(value), 60)} ({type(value).__name__}) "
                f"for item {i}; it must return a finite float (prompt {_excerpt(p)})"
            )
        scores.append(float(value))
    return scores


def score_samples(
    fn: RewardFn,
    decode: Callable[[list[list[int]]], list[str]],
    prompts: Sequence[Prompt],
    samples: Sequence[Sample],
) -> list[float]:
    """The score stage: decode each sample's response and score it against its prompt.

    `decode` turns token-id lists into text (the tokenizer's batch_decode, special tokens
    skipped); `sample.prompt_index` indexes `prompts`.
    """
    responses = decode([s.response_ids for s in samples])
    owners = [prompts[s.prompt_index] for s in samples]
    return score_batch(fn, [p.text for p in owners], responses, [p.answer for p in owners])


def _fn_name(fn: Callable) -> str:
    module = getattr(fn, "__module__", None)
    qualname = getattr(fn, "__qualname__", None) or repr(fn)
    return f"{module}:{qualname}" if module else qualname


def _cut(text: str, limit: int) -> str:
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def _excerpt(text: str, limit: int = 40) -> str:
    """A short, one-line, quoted excerpt of a prompt or response for an error message."""
    return repr(_cut(text, limit))


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split())
