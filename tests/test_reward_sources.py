"""A reward per data source, the extended user signature, and the `math` built-in (reward.py).

Run: python -m pytest tests/test_reward_sources.py -q
"""

from __future__ import annotations

import importlib.util
import sys
import textwrap

import pytest

from hpc_ppo.config import RewardConfig, load_config
from hpc_ppo.data import Prompt
from hpc_ppo.errors import ConfigError
from hpc_ppo.reward import math_reward, resolve_reward_fn, resolve_rewards, score_texts


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    """A user reward module with the 3-argument and the extended signature."""
    (tmp_path / "hpc_src_rewards.py").write_text(
        textwrap.dedent(
            """
            def plain(prompt, response, answer):
                return 0.5

            def extended(prompt, response, answer, *, source, extra_info):
                return float(len(source)) + (extra_info or {}).get("bonus", 0)

            def needs_more(prompt, response, answer, context):
                return 0.0
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "hpc_src_rewards"
    sys.modules.pop("hpc_src_rewards", None)


def test_each_source_gets_its_reward_the_rest_reward_fn(user_module):
    rewards = resolve_rewards(
        RewardConfig(fn="exact_match", by_source=[f"ab={user_module}:extended", "c=gsm8k"])
    )
    owners = [
        Prompt("p", "x", "ab", {"bonus": 10}),
        Prompt("p", "5", "c"),
        Prompt("p", "x", "other"),
        Prompt("p", "x", "ab"),
    ]
    assert score_texts(rewards, owners, ["r", "#### 5", "x", "r"]) == [12.0, 1.0, 1.0, 2.0]


def test_three_argument_user_reward_keeps_working(user_module):
    fn = resolve_reward_fn(f"{user_module}:plain")
    rewards = resolve_rewards(RewardConfig(fn=f"{user_module}:plain"))
    assert score_texts(rewards, [Prompt("p", None, "s", {"a": 1})], ["r"]) == [0.5]
    assert fn("p", "r", None) == 0.5


def test_a_reward_asking_for_unknown_arguments_is_refused(user_module):
    with pytest.raises(ConfigError, match=r"reward.by_source\[0\]=hpc_src_rewards:needs_more: "):
        load_config(None, [f"reward.by_source=[x={user_module}:needs_more]"])


@pytest.mark.parametrize(
    ("items", "line"),
    [
        (
            "[gsm8k]",
            "reward.by_source[0]='gsm8k': expected source=reward, e.g. openai/gsm8k=gsm8k",
        ),
        (
            "[a=gsm8k, a=math]",
            "reward.by_source[1]='a=math': source 'a' is given twice; keep one reward for it",
        ),
        (
            "[a=gsm8kk]",
            "reward.by_source[0]=gsm8kk: unknown built-in reward (did you mean 'gsm8k'?); use one"
            " of exact_match, gsm8k, letters, math or 'pkg.module:function'",
        ),
    ],
)
def test_bad_by_source_items_are_one_line_each(items, line):
    with pytest.raises(ConfigError) as e:
        load_config(None, [f"reward.by_source={items}"])
    assert str(e.value) == line


def test_a_source_the_data_does_not_have_is_an_error(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_text('{"prompt": "p", "answer": "1", "data_source": "openai/gsm8k"}\n')
    with pytest.raises(ConfigError) as e:
        load_config(
            None,
            [
                f"data.path={path}",
                "trainer.batch_size=1",
                "algo.mini_batch_size=1",
                "reward.by_source=[openai/gsm8=gsm8k]",
            ],
        )
    assert str(e.value) == (
        "reward.by_source: no row of the data has source 'openai/gsm8'; did you mean"
        " 'openai/gsm8k'? sources: openai/gsm8k (a row's data_source, else its file's name)"
    )


def test_math_without_math_verify_names_the_extra(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda n, *a: None if n == "math_verify" else real(n, *a)
    )
    with pytest.raises(ConfigError) as e:
        load_config(None, ["reward.fn=math"])
    assert str(e.value) == (
        "reward.fn=math: the math reward needs the math_verify package;"
        " pip install 'hpc-ppo[math]' (math-verify)"
    )


@pytest.mark.skipif(importlib.util.find_spec("math_verify") is None, reason="needs math-verify")
@pytest.mark.parametrize(
    ("response", "answer", "expected"),
    [
        ("so the answer is \\boxed{72}", "72", 1.0),
        ("we get $\\boxed{0.5}$", "\\frac{1}{2}", 1.0),
        ("\\boxed{\\dfrac12}", "\\boxed{\\frac{1}{2}}", 1.0),
        ("\\boxed{4}", "3", 0.0),
        ("", "3", 0.0),
    ],
)
def test_math_reward_compares_final_answers(response, answer, expected):
    assert math_reward("q", response, answer) == expected
