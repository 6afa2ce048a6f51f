"""Tests for hpc_ppo.reward: built-ins, resolving `reward.fn`, batch scoring.

Run: python -m pytest tests/test_reward.py -q
"""

import math
from pathlib import Path

import pytest

from hpc_ppo.data import letters_reward, load_prompts
from hpc_ppo.errors import ConfigError
from hpc_ppo.reward import (
    BUILTIN_REWARDS,
    exact_match,
    extract_gsm8k_number,
    gsm8k,
    resolve_reward_fn,
    score_batch,
)

GSM8K_TINY = Path(__file__).parent / "data" / "gsm8k_tiny.jsonl"


# ---------------------------------------------------------------- built-ins


@pytest.mark.parametrize(
    "response, answer, expected",
    [
        ("Paris", "Paris", 1.0),
        ("  Paris \n", "Paris", 1.0),
        ("Paris.", "Paris", 1.0),
        ("Paris", "Paris.", 1.0),
        ("paris", "Paris", 0.0),
        ("Paris, France", "Paris", 0.0),
        ("", "Paris", 0.0),
        ("Paris..", "Paris", 0.0),  # only one trailing period is ignored
    ],
)
def test_exact_match(response, answer, expected):
    assert exact_match("q", response, answer) == expected


@pytest.mark.parametrize(
    "text, number",
    [
        ("so 3 * 4 = 12.\n#### 12", 12.0),
        ("#### 1,234", 1234.0),
        ("####$1,234.50", 1234.5),
        ("#### -6 degrees", -6.0),
        ("#### 42.", 42.0),
        ("#### 1 then later #### 2", 2.0),  # the last marker wins
        ("the answer is 12", None),  # strict: no marker, no number
        ("#### twelve", None),
        ("####", None),
    ],
)
def test_extract_gsm8k_number(text, number):
    assert extract_gsm8k_number(text) == number


@pytest.mark.parametrize(
    "response, answer, expected",
    [
        ("3 boxes of 4 is 12.\n#### 12", "3*4=12\n#### 12", 1.0),
        ("#### 1234", "#### 1,234", 1.0),
        ("#### $1,234", "#### 1234", 1.0),
        ("#### 12.0", "#### 12", 1.0),
        ("#### 13", "#### 12", 0.0),
        ("The answer is 12", "#### 12", 0.0),  # strict
        ("#### 12 ... wait, #### 13", "#### 12", 0.0),
        ("#### 7", "7", 1.0),  # a bare-number ground truth
    ],
)
def test_gsm8k(response, answer, expected):
    assert gsm8k("q", response, answer) == expected


def test_gsm8k_on_shipped_rows():
    prompts = load_prompts(str(GSM8K_TINY), prompt_key="question")
    finals = ["12", "300", "17", "1234", "32", "21", "5", "-6"]
    for p, final in zip(prompts, finals, strict=True):
        assert gsm8k(p.text, f"Reasoning...\n#### {final}", p.answer) == 1.0
        assert gsm8k(p.text, f"#### {final}1", p.answer) == 0.0


@pytest.mark.parametrize("fn", [exact_match, gsm8k])
def test_answer_required(fn):
    with pytest.raises(ValueError, match="data.answer_key"):
        fn("q", "r", None)


def test_gsm8k_ground_truth_without_number():
    with pytest.raises(ValueError, match="ground-truth"):
        gsm8k("q", "#### 1", "#### none")


def test_builtin_registry():
    assert set(BUILTIN_REWARDS) == {"exact_match", "gsm8k", "letters", "math"}
    assert BUILTIN_REWARDS["letters"] is letters_reward
    for name, fn in BUILTIN_REWARDS.items():
        assert resolve_reward_fn(name) is fn


# ---------------------------------------------------------------- resolve_reward_fn


def make_module(tmp_path: Path, monkeypatch, name: str, source: str) -> None:
    (tmp_path / f"{name}.py").write_text(source)
    monkeypatch.syspath_prepend(str(tmp_path))


USER_MODULE = """
def score(prompt, response, answer):
    return float(response.count(answer or "x"))

class Scorer:
    @staticmethod
    def score(prompt, response, answer):
        return 0.5

threshold = 0.5

def two_args(prompt, response):
    return 1.0
"""


def test_user_fn_module_colon_function(tmp_path, monkeypatch):
    make_module(tmp_path, monkeypatch, "hpc_user_rewards_a", USER_MODULE)
    fn = resolve_reward_fn("hpc_user_rewards_a:score")
    assert fn("p", "ab ab", "ab") == 2.0
    assert score_batch(fn, ["p", "p"], ["ab", "x"], ["ab", None]) == [1.0, 1.0]
    assert resolve_reward_fn("hpc_user_rewards_a:Scorer.score")("p", "r", None) == 0.5


def test_user_fn_in_package(tmp_path, monkeypatch):
    pkg = tmp_path / "hpc_user_pkg_b"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "rewards.py").write_text("def score(prompt, response, answer=None):\n    return 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert resolve_reward_fn("hpc_user_pkg_b.rewards:score")("p", "r", None) == 1


def one_line_config_error(spec: str) -> str:
    with pytest.raises(ConfigError) as err:
        resolve_reward_fn(spec)
    msg = str(err.value)
    assert "\n" not in msg
    assert msg.startswith(f"reward.fn={spec}: ")
    return msg


def test_unknown_builtin_suggests_close_match_and_lists_options():
    msg = one_line_config_error("gsm8")
    assert "unknown built-in reward (did you mean 'gsm8k'?)" in msg
    assert "exact_match, gsm8k, letters" in msg and "'pkg.module:function'" in msg


def test_unknown_builtin_without_close_match():
    msg = one_line_config_error("zzz")
    assert "did you mean" not in msg and "exact_match, gsm8k, letters" in msg


@pytest.mark.parametrize("spec", [":score", "module:", ":"])
def test_malformed_module_spec(spec):
    assert "expected 'pkg.module:function'" in one_line_config_error(spec)


def test_module_not_importable():
    msg = one_line_config_error("hpc_no_such_module_xyz:score")
    assert "cannot import module 'hpc_no_such_module_xyz'" in msg
    assert "ModuleNotFoundError: No module named 'hpc_no_such_module_xyz'" in msg
    assert "PYTHONPATH" in msg


def test_module_that_fails_while_importing(tmp_path, monkeypatch):
    make_module(tmp_path, monkeypatch, "hpc_user_rewards_c", "import hpc_missing_dep_xyz\n")
    msg = one_line_config_error("hpc_user_rewards_c:score")
    assert "No module named 'hpc_missing_dep_xyz'" in msg


def test_module_with_syntax_error(tmp_path, monkeypatch):
    make_module(tmp_path, monkeypatch, "hpc_user_rewards_d", "def score(:\n")
    assert "SyntaxError" in one_line_config_error("hpc_user_rewards_d:score")


def test_attribute_missing_suggests_close_name(tmp_path, monkeypatch):
    make_module(tmp_path, monkeypatch, "hpc_user_rewards_e", USER_MODULE)
    msg = one_line_config_error("hpc_user_rewards_e:scor")
    assert "module 'hpc_user_rewards_e' has no attribute 'scor'" in msg
    assert "did you mean hpc_user_rewards_e:score?" in msg


def test_attribute_not_callable(tmp_path, monkeypatch):
    make_module(tmp_path, monkeypatch, "hpc_user_rewards_f", USER_MODULE)
    msg = one_line_config_error("hpc_user_rewards_f:threshold")
    assert "'threshold' is a float, not a function" in msg


def test_wrong_signature(tmp_path, monkeypatch):
    make_module(tmp_path, monkeypatch, "hpc_user_rewards_g", USER_MODULE)
    msg = one_line_config_error("hpc_user_rewards_g:two_args")
    assert "two_args(prompt, response)" in msg and "fn(prompt, response, answer)" in msg


# ---------------------------------------------------------------- score_batch


def test_score_batch_converts_bools_and_ints():
    values = iter([True, False, 3, 0.25])
    assert score_batch(lambda p, r, a: next(values), "abcd", "abcd", [None] * 4) == [
        1.0,
        0.0,
        3.0,
        0.25,
    ]


def test_score_batch_letters_end_to_end():
    prompts = ["echo: ab", "echo: ab", "echo: cabd"]
    responses = ["abababab", "abzz", ""]
    assert score_batch(letters_reward, prompts, responses, [None] * 3) == [1.0, 0.25, 0.0]


def bad_scores(p, r, a):
    return {"nan": math.nan, "inf": math.inf, "str": "1.0", "none": None}.get(r, 1.0)


@pytest.mark.parametrize("bad", ["nan", "inf", "str", "none"])
def test_score_batch_rejects_non_finite_or_non_numbers(bad):
    with pytest.raises(RuntimeError) as err:
        score_batch(bad_scores, ["p"] * 3, ["ok", "ok", bad], [None] * 3)
    msg = str(err.value)
    assert "test_reward:bad_scores" in msg and "item 2" in msg
    assert "finite float" in msg


def test_score_batch_names_value():
    with pytest.raises(RuntimeError, match=r"returned nan \(float\) for item 0"):
        score_batch(bad_scores, ["p"], ["nan"], [None])


def test_score_batch_wraps_exceptions_with_index():
    with pytest.raises(RuntimeError, match=r"raised on item 1: ValueError: exact_match needs"):
        score_batch(exact_match, ["p", "p"], ["a", "b"], ["a", None])


def test_score_batch_length_mismatch():
    with pytest.raises(ValueError, match="2 prompts, 1 responses and 2 answers"):
        score_batch(exact_match, ["p", "p"], ["a"], ["a", "b"])
