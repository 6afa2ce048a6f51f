"""Reward functions: the user contract, the built-ins, and how `reward.fn` is resolved.

A reward function scores one response:

    fn(prompt: str, response: str, answer: str | None) -> float

`answer` is the ground truth read from `data.answer_key` (None when the task has none). A user
reward is any importable function with that signature, for example in my_pkg/rewards.py:

    def score(prompt: str, response: str, answer: str | None) -> float:
        return 1.0 if answer is not None and answer in response else 0.0

and in the experiment YAML (or `reward.fn=my_pkg.rewards:score` on the command line):

    reward.fn: "my_pkg.rewards:score"

The extended signature: a function that also declares `source` and/or `extra_info` gets the
row's data source (verl's `data_source` column, else the file's stem) and its `extra_info`
mapping (None when the row has none), by keyword:

    def score(prompt, response, answer, *, source: str, extra_info: dict | None) -> float: ...

A reward per data source (rows of other sources use reward.fn):

    reward:
      fn: gsm8k
      by_source: ["openai/gsm8k=gsm8k", "lighteval/MATH=math", "mine=my_pkg.rewards:score"]

Built-ins, by name: "exact_match", "gsm8k", "letters", "math" (see `BUILTIN_REWARDS`; "math"
needs the math-verify package: pip install 'hpc-ppo[math]'). The trainer resolves the names
once with `resolve_rewards` (so `hpc-ppo validate` catches a typo) and scores each step's
responses with `score_samples` (the score stage), on the rank that generated them.

    hpc-ppo run configs/tiny-cpu.yaml reward.fn=letters     # every step scores its samples
"""

from __future__ import annotations

import difflib
import importlib
import importlib.util
import inspect
import math
import numbers
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from hpc_ppo.config import RewardConfig
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


def math_reward(prompt: str, response: str, answer: str | None) -> float:
    """1.0 if the response's final answer equals the ground truth by math-verify (MATH-style:
    `\\boxed{...}`, LaTeX or plain expressions; 1/2 == 0.5 == \\frac{1}{2}), else 0.0."""
    if answer is None:
        raise ValueError("math needs a ground-truth answer; set data.answer_key")
    from math_verify import parse, verify  # the optional extra; resolve_reward_fn checked it

    gold = parse(answer if "\\boxed" in answer or "$" in answer else f"\\boxed{{{answer}}}")
    return 1.0 if gold and verify(gold, parse(response)) else 0.0


BUILTIN_REWARDS: dict[str, RewardFn] = {
    "exact_match": exact_match,
    "gsm8k": gsm8k,
    "letters": letters_reward,
    "math": math_reward,
}
# Built-ins that need a package of an optional extra: (import name, pip requirement).
_EXTRAS = {"math": ("math_verify", "'hpc-ppo[math]' (math-verify)")}
EXTRA_ARGS = ("source", "extra_info")  # the extended signature's keyword parameters


@dataclass(frozen=True)
class Rewards:
    """The run's reward functions: `reward.fn`, and `reward.by_source` for some sources."""

    default: RewardFn
    by_source: dict[str, RewardFn] = field(default_factory=dict)

    def for_source(self, source: str) -> RewardFn:
        return self.by_source.get(source, self.default)


def resolve_rewards(rc: RewardConfig) -> Rewards:
    """Every reward of the `reward` section, resolved; the first failure is a ConfigError."""
    return Rewards(
        resolve_reward_fn(rc.fn),
        {
            source: resolve_reward_fn(spec, f"reward.by_source[{i}]")
            for i, (source, spec) in enumerate(parse_by_source(rc.by_source).items())
        },
    )


def parse_by_source(items: Sequence[str]) -> dict[str, str]:
    """["openai/gsm8k=gsm8k", ...] -> {"openai/gsm8k": "gsm8k"}; ConfigError for an item
    without `=` or a source given twice."""
    out: dict[str, str] = {}
    for i, item in enumerate(items):
        source, sep, spec = item.rpartition("=")
        key = f"reward.by_source[{i}]={item!r}"
        if not sep or not source.strip() or not spec.strip():
            raise ConfigError(f"{key}: expected source=reward, e.g. openai/gsm8k=gsm8k")
        if source in out:
            raise ConfigError(f"{key}: source {source!r} is given twice; keep one reward for it")
        out[source] = spec.strip()
    return out


def extra_args(fn: Callable) -> tuple[str, ...]:
    """Which of `source`, `extra_info` the function takes (the extended signature)."""
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):  # no signature available (some C functions)
        return ()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return EXTRA_ARGS
    names = {p.name for p in params if p.kind is not inspect.Parameter.POSITIONAL_ONLY}
    return tuple(a for a in EXTRA_ARGS if a in names)


def resolve_reward_fn(spec: str, key_name: str = "reward.fn") -> RewardFn:
    """A built-in name ("gsm8k") or "pkg.module:function"; every failure is a ConfigError."""
    key = f"{key_name}={spec}"
    if ":" not in spec:
        if spec in _EXTRAS and importlib.util.find_spec(_EXTRAS[spec][0]) is None:
            raise ConfigError(
                f"{key}: the {spec} reward needs the {_EXTRAS[spec][0]} package; "
                f"pip install {_EXTRAS[spec][1]}"
            )
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
        extras = {name: None for name in extra_args(fn)}
        inspect.signature(fn).bind("prompt", "response", None, **extras)
    except TypeError:
        raise ConfigError(
            f"{key}: {attr}{inspect.signature(fn)} cannot be called as "
            f"fn(prompt, response, answer) (and, if it asks, source=..., extra_info=...); "
            f"give it those parameters"
        ) from None
    except ValueError:  # no signature available (some C functions): trust the user
        pass
    return fn


def score_batch(
    fn: RewardFn,
    prompts: Sequence[str],
    responses: Sequence[str],
    answers: Sequence[str | None],
    extras: Sequence[dict[str, Any]] | None = None,
) -> list[float]:
    """fn over each (prompt, response, answer), with `extras[i]` as keyword arguments (the
    extended signature); each score must be a finite real number.

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
            value = fn(p, r, a, **(extras[i] if extras else {}))
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
    rewards: Rewards,
    decode: Callable[[list[list[int]]], list[str]],
    prompts: Sequence[Prompt],
    samples: Sequence[Sample],
) -> list[float]:
    """The score stage: decode each sample's response and score it against its prompt with
    its data source's reward.

    `decode` turns token-id lists into text (the tokenizer's batch_decode, special tokens
    skipped); `sample.prompt_index` indexes `prompts`.
    """
    responses = decode([s.response_ids for s in samples])
    return score_texts(rewards, [prompts[s.prompt_index] for s in samples], responses)


def score_texts(rewards: Rewards, owners: Sequence[Prompt], responses: list[str]) -> list[float]:
    """Each response scored against its prompt (`owners[i]`), by its source's reward."""
    scores = [0.0] * len(owners)
    for source in dict.fromkeys(p.source for p in owners):
        rows = [i for i, p in enumerate(owners) if p.source == source]
        fn = rewards.for_source(source)
        wanted = extra_args(fn)
        extras = [
            {
                k: v
                for k, v in (("source", source), ("extra_info", owners[i].extra_info))
                if k in wanted
            }
            for i in rows
        ]
        part = score_batch(
            fn,
            [owners[i].text for i in rows],
            [responses[i] for i in rows],
            [owners[i].answer for i in rows],
            extras if wanted else None,
        )
        for i, value in zip(rows, part, strict=True):
            scores[i] = value
    return scores


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
