"""Tests for hpc_ppo.config: loading, overrides, error messages, round trips, the reference.

Run: python -m pytest tests/test_config.py -q
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from hpc_ppo.config import (
    BUILTIN_TINY_MODEL,
    AlgoConfig,
    Config,
    TrainerConfig,
    dump_yaml,
    load_config,
    reference,
    save_config,
    to_dict,
    validate,
)
from hpc_ppo.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs" / "tiny-cpu.yaml"


def errors_of(path: str | Path | None, overrides: list[str]) -> list[str]:
    """The error lines load_config raises for this input (fails the test if it loads)."""
    with pytest.raises(ConfigError) as info:
        load_config(path, overrides)
    return str(info.value).splitlines()


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


# ---------------------------------------------------------------- loading and defaults


def test_tiny_cpu_yaml_loads_with_its_values():
    cfg = load_config(TINY)
    assert validate(cfg) == []
    # The CPU demo: builtin model, synthetic letters task, no GPU.
    assert cfg.model.path == BUILTIN_TINY_MODEL
    assert cfg.data.path is None and cfg.reward.fn == "letters"
    assert cfg.trainer.device == "cpu" and cfg.rollout.engine == "hf"
    # Every value written in the file is the one loaded (numbers compared as numbers).
    loaded = dict(_flatten(to_dict(cfg)))
    written = dict(_flatten(yaml.safe_load(TINY.read_text())))
    assert written
    for key, value in written.items():
        if isinstance(loaded[key], float) and isinstance(value, str):
            value = float(value)  # "1e-3" is a string to YAML 1.1
        assert loaded[key] == value, key
    assert type(cfg.actor.lr) is float and type(cfg.trainer.batch_size) is int


def test_missing_sections_take_defaults(tmp_path):
    cfg = load_config(write(tmp_path / "c.yaml", "trainer:\n  total_steps: 3\n"))
    assert cfg.trainer.total_steps == 3
    assert cfg.trainer.batch_size == TrainerConfig().batch_size
    assert cfg.algo == AlgoConfig()
    assert cfg.actor.lr == 1e-6
    assert cfg.critic.lr == 1e-5
    assert load_config(None) == Config()


def test_empty_file_is_all_defaults(tmp_path):
    assert load_config(write(tmp_path / "c.yaml", "")) == Config()


def test_present_section_keeps_the_parents_default_for_unset_keys(tmp_path):
    # Bug fixed: a `critic:` section without lr used OptimConfig's 1e-6, not critic's 1e-5.
    cfg = load_config(write(tmp_path / "c.yaml", "critic:\n  weight_decay: 0.1\n"))
    assert cfg.critic.lr == 1e-5 and cfg.critic.weight_decay == 0.1
    assert load_config(None, ["critic.grad_clip=2"]).critic.lr == 1e-5


def test_override_into_empty_yaml_section(tmp_path):
    # Bug fixed: "critic:" alone is None in YAML; an override into it was rejected.
    cfg = load_config(write(tmp_path / "c.yaml", "critic:\nactor:\n"), ["critic.lr=1e-4"])
    assert cfg.critic.lr == 1e-4
    assert cfg.actor.lr == 1e-6


# ---------------------------------------------------------------- overrides of every type


def test_float_override_in_yaml11_exponent_form_becomes_float():
    cfg = load_config(TINY, ["actor.lr=1e-4"])
    assert cfg.actor.lr == 0.0001
    assert type(cfg.actor.lr) is float


def test_float_in_yaml_file_written_as_1e_minus_4(tmp_path):
    cfg = load_config(write(tmp_path / "c.yaml", "actor:\n  lr: 1e-4\n"))
    assert cfg.actor.lr == 0.0001 and type(cfg.actor.lr) is float


def test_int_given_for_float_becomes_float():
    cfg = load_config(TINY, ["algo.gamma=1"])
    assert cfg.algo.gamma == 1.0 and type(cfg.algo.gamma) is float


def test_int_override():
    cfg = load_config(TINY, ["rollout.n=8"])
    assert cfg.rollout.n == 8 and type(cfg.rollout.n) is int


@pytest.mark.parametrize("text, expected", [("true", True), ("false", False)])
def test_bool_override(text, expected):
    cfg = load_config(TINY, [f"model.gradient_checkpointing={text}"])
    assert cfg.model.gradient_checkpointing is expected


def test_null_override():
    assert load_config(TINY, ["algo.value_clip=null"]).algo.value_clip is None
    assert load_config(TINY, ["trainer.run_name=null"]).trainer.run_name is None


def test_tuple_override():
    cfg = load_config(TINY, ["actor.betas=[0.9,0.95]"])
    assert cfg.actor.betas == (0.9, 0.95)
    assert isinstance(cfg.actor.betas, tuple)


def test_tuple_of_wrong_length_is_rejected():
    (line,) = errors_of(TINY, ["actor.betas=[0.9]"])
    assert line.startswith("actor.betas=") and "expected a list of 2 numbers" in line


def test_string_overrides():
    cfg = load_config(
        TINY,
        ["trainer.run_name=exp1", "reward.fn=exact_match", "tracking.uri=http://host:5000"],
    )
    assert cfg.trainer.run_name == "exp1"
    assert cfg.reward.fn == "exact_match"
    assert cfg.tracking.uri == "http://host:5000"


def test_empty_string_override():
    assert load_config(TINY, ["tracking.experiment="]).tracking.experiment == ""


def test_override_creates_nested_sections_missing_from_the_file(tmp_path):
    path = write(tmp_path / "c.yaml", "trainer:\n  total_steps: 3\n")
    cfg = load_config(path, ["data.synthetic.num_prompts=8", "model.tiny.hidden_size=32"])
    assert cfg.data.synthetic.num_prompts == 8
    assert cfg.data.synthetic.max_len == 6  # siblings keep their defaults
    assert cfg.model.tiny.hidden_size == 32
    assert cfg.trainer.total_steps == 3


def test_later_override_wins():
    assert load_config(TINY, ["rollout.n=2", "rollout.n=6"]).rollout.n == 6


def test_override_without_equals_sign():
    (line,) = errors_of(TINY, ["rollout.n"])
    assert "'rollout.n'" in line and "expected key=value" in line


def test_override_through_a_value():
    (line,) = errors_of(TINY, ["actor.lr.x=1"])
    assert "actor.lr.x" in line and "lr is a value, not a section" in line


# ---------------------------------------------------------------- unknown keys


def test_unknown_key_override_suggests_the_close_one():
    (line,) = errors_of(TINY, ["actor.lrr=1"])
    assert "actor.lrr" in line
    assert "did you mean actor.lr" in line


def test_misspelled_section_suggests_trainer():
    (line,) = errors_of(TINY, ["trainr.total_steps=3"])
    assert line.startswith("trainr")
    assert "did you mean trainer" in line


def test_unknown_key_in_yaml_file(tmp_path):
    path = write(tmp_path / "c.yaml", "rollout:\n  temprature: 0.7\n")
    (line,) = errors_of(path, [])
    assert "rollout.temprature" in line
    assert "did you mean rollout.temperature" in line


def test_unknown_key_without_close_match_lists_valid_keys():
    (line,) = errors_of(TINY, ["reward.zzzzzz=1"])
    assert "reward.zzzzzz" in line and "valid keys: fn" in line


def test_scalar_where_a_section_belongs():
    (line,) = errors_of(TINY, ["actor=1"])
    assert line.startswith("actor:") and "expected a section" in line


# ---------------------------------------------------------------- types


def test_type_error_names_key_and_expected_type():
    assert errors_of(TINY, ["rollout.n=abc"]) == ["rollout.n='abc': expected an integer"]


@pytest.mark.parametrize(
    "override, fragment",
    [
        ("rollout.n=true", "rollout.n=True: expected an integer"),
        ("rollout.n=2.5", "rollout.n=2.5: expected an integer"),
        ("actor.lr=true", "actor.lr=True: expected a number"),
        ("actor.lr=fast", "actor.lr='fast': expected a number"),
        ("data.shuffle=1", "data.shuffle=1: expected true/false"),
        ("model.dtype=16", "model.dtype='16': must be one of float32, bfloat16"),
        ("trainer.threads_per_rank=x", "expected an integer or null"),
    ],
)
def test_wrong_types_are_rejected(override, fragment):
    """A number typed for a string field is kept as typed text (slurm.time=12:00:00), so the
    field's own check (here: choices) reports it."""
    (line,) = errors_of(TINY, [override])
    assert fragment in line


# ---------------------------------------------------------------- ranges and choices


def test_range_error_names_key_bound_and_range():
    (line,) = errors_of(TINY, ["rollout.n=0"])
    assert line.startswith("rollout.n=0")
    assert ">= 1" in line
    assert "allowed range [1, 1024]" in line


def test_upper_bound_and_open_interval():
    (line,) = errors_of(TINY, ["rollout.n=2000"])
    assert "<= 1024" in line and "[1, 1024]" in line
    (line,) = errors_of(TINY, ["actor.lr=0"])
    assert line.startswith("actor.lr=0") and "(0.0, 1.0)" in line


def test_choice_error_suggests_the_close_one():
    (line,) = errors_of(TINY, ["algo.name=pp0"])
    assert line.startswith("algo.name='pp0'")
    assert "ppo, grpo" in line
    assert "did you mean ppo" in line


@pytest.mark.parametrize(
    "override, key",
    [
        ("algo.mini_batch_size=0", "algo.mini_batch_size=0"),
        ("trainer.nprocs=0", "trainer.nprocs=0"),
        ("model.tiny.num_attention_heads=0", "model.tiny.num_attention_heads=0"),
        ("model.tiny.num_key_value_heads=0", "model.tiny.num_key_value_heads=0"),
    ],
)
def test_zero_divisor_is_a_range_error_not_a_crash(override, key):
    # Bug fixed: the cross-field divisibility rules raised ZeroDivisionError.
    (line,) = errors_of(TINY, [override])
    assert line.startswith(key) and ">= 1" in line


@pytest.mark.parametrize("value", ["inf", ".inf", "nan", ".nan"])
def test_non_finite_float_is_rejected(value):
    # Bug fixed: weight_decay=inf passed (only a lower bound).
    (line,) = errors_of(TINY, [f"actor.weight_decay={value}"])
    assert line.startswith("actor.weight_decay=") and "finite" in line


@pytest.mark.parametrize("betas", ["[0.9,1.0]", "[1.5,0.9]", "[-0.1,0.9]", "[nan,0.9]"])
def test_betas_outside_unit_interval(betas):
    # Bug fixed: betas were unchecked, so the optimizer failed only after start-up.
    (line,) = errors_of(TINY, [f"critic.betas={betas}"])
    assert line.startswith("critic.betas=") and "[0, 1)" in line


# ---------------------------------------------------------------- cross-field rules


def test_mini_batch_must_divide_batch():
    (line,) = errors_of(TINY, ["trainer.batch_size=32", "algo.mini_batch_size=12"])
    assert "algo.mini_batch_size=12" in line and "trainer.batch_size=32" in line
    assert "divide" in line


def test_mini_batch_must_be_multiple_of_nprocs():
    (line,) = errors_of(
        TINY, ["trainer.nprocs=3", "algo.mini_batch_size=8", "trainer.batch_size=24"]
    )
    assert "algo.mini_batch_size=8" in line and "trainer.nprocs=3" in line
    assert "multiple" in line


def test_grpo_needs_two_samples():
    (line,) = errors_of(TINY, ["algo.name=grpo", "rollout.n=1"])
    assert line.startswith("rollout.n=1") and "GRPO" in line
    assert load_config(TINY, ["algo.name=grpo", "rollout.n=2"]).algo.name == "grpo"


def test_model_path_not_found(tmp_path):
    missing = tmp_path / "no-such-model"
    lines = errors_of(TINY, [f"model.path={missing}"])
    assert len(lines) == 1
    assert lines[0].startswith(f"model.path={missing}") and "not found" in lines[0]


def test_model_path_without_config_json(tmp_path):
    lines = errors_of(TINY, [f"model.path={tmp_path}"])
    assert len(lines) == 1
    assert lines[0].startswith(f"model.path={tmp_path}") and "config.json" in lines[0]


def test_model_path_with_config_json_passes(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    assert load_config(TINY, [f"model.path={tmp_path}"]).model.path == str(tmp_path)


def test_critic_path_without_config_json(tmp_path):
    (line,) = errors_of(TINY, [f"model.critic_path={tmp_path}"])
    assert line.startswith(f"model.critic_path={tmp_path}") and "config.json" in line


def test_data_path_missing_file(tmp_path):
    missing = tmp_path / "nope.jsonl"
    assert errors_of(TINY, [f"data.path={missing}"]) == [f"data.path={missing}: file not found"]


def test_data_path_malformed_jsonl_line_names_file_and_line(tmp_path):
    path = write(tmp_path / "p.jsonl", '{"prompt": "a", "answer": "b"}\n{"prompt": oops}\n')
    (line,) = errors_of(TINY, [f"data.path={path}"])
    assert f"{path}:2:" in line and "invalid JSON" in line


def test_data_path_valid_jsonl(tmp_path):
    path = write(tmp_path / "p.jsonl", '{"prompt": "a", "answer": "b"}\n')
    assert load_config(TINY, [f"data.path={path}"]).data.path == str(path)


def test_unknown_reward_fn():
    (line,) = errors_of(TINY, ["reward.fn=leters"])
    assert line.startswith("reward.fn=leters") and "did you mean 'letters'" in line


def test_synthetic_min_len_above_max_len():
    (line,) = errors_of(TINY, ["data.synthetic.max_len=6", "data.synthetic.min_len=7"])
    assert "data.synthetic.min_len=7" in line and "data.synthetic.max_len=6" in line


def test_tiny_heads_must_divide_hidden():
    (line,) = errors_of(
        TINY,
        [
            "model.tiny.hidden_size=64",
            "model.tiny.num_attention_heads=5",
            "model.tiny.num_key_value_heads=1",
        ],
    )
    assert "model.tiny.num_attention_heads=5" in line and "hidden_size=64" in line


def test_vllm_on_cpu():
    (line,) = errors_of(TINY, ["rollout.engine=vllm"])
    assert "rollout.engine=vllm" in line and "trainer.device" in line


# ---------------------------------------------------------------- errors reported together


def test_all_errors_are_reported_together():
    lines = errors_of(TINY, ["rollout.n=abc", "actor.lrr=1"])
    assert len(lines) == 2
    assert any(line.startswith("rollout.n='abc'") for line in lines)
    assert any("actor.lrr" in line for line in lines)


def test_field_and_cross_field_errors_together(tmp_path):
    lines = errors_of(
        TINY,
        ["rollout.n=0", "reward.fn=nope", f"data.path={tmp_path / 'x.jsonl'}"],
    )
    assert len(lines) == 3
    assert sorted(line.split("=")[0] for line in lines) == ["data.path", "reward.fn", "rollout.n"]


# ---------------------------------------------------------------- bad files


def test_missing_config_file(tmp_path):
    lines = errors_of(tmp_path / "nope.yaml", [])
    assert lines == [f"config file {tmp_path / 'nope.yaml'} not found"]


def test_invalid_yaml_is_one_line(tmp_path):
    lines = errors_of(write(tmp_path / "c.yaml", "actor: [1,\n  lr: 2\n"), [])
    assert len(lines) == 1 and "invalid YAML" in lines[0]


def test_top_level_not_a_mapping(tmp_path):
    (line,) = errors_of(write(tmp_path / "c.yaml", "- a\n- b\n"), [])
    assert "top level must be a mapping" in line and "list" in line


def test_non_utf8_config_file(tmp_path):
    # Bug fixed: a binary or Latin-1 file raised UnicodeDecodeError instead of ConfigError.
    path = tmp_path / "c.yaml"
    path.write_bytes(b"trainer:\n  run_name: caf\xe9\n")
    (line,) = errors_of(path, [])
    assert str(path) in line and "cannot read" in line


# ---------------------------------------------------------------- output and round trips


def test_save_and_load_round_trip(tmp_path):
    cfg = load_config(
        TINY,
        ["actor.lr=1e-4", "actor.betas=[0.9,0.95]", "algo.value_clip=null", "trainer.run_name=x"],
    )
    path = tmp_path / "config.yaml"
    save_config(cfg, path)
    assert load_config(path) == cfg
    assert not path.with_suffix(".yaml.tmp").exists()


def test_defaults_round_trip_through_dump_yaml(tmp_path):
    cfg = Config()
    assert load_config(write(tmp_path / "c.yaml", dump_yaml(cfg))) == cfg


def test_dump_yaml_reloads_with_every_leaf():
    cfg = load_config(TINY, ["critic.lr=3e-5"])
    data = yaml.safe_load(dump_yaml(cfg))
    assert data == to_dict(cfg)
    assert data["critic"]["lr"] == 3e-5
    assert data["actor"]["betas"] == [0.9, 0.999]  # tuples are written as lists
    assert {row[0] for row in reference()} == set(_leaf_keys(data))


def _leaf_keys(d: dict, prefix: str = "") -> list[str]:
    out = []
    for k, v in d.items():
        if isinstance(v, dict):
            out.extend(_leaf_keys(v, f"{prefix}{k}."))
        else:
            out.append(f"{prefix}{k}")
    return out


# ---------------------------------------------------------------- the reference


def test_reference_lists_every_leaf_key():
    rows = {key: (default, doc) for key, default, doc in reference()}
    for key in ("actor.lr", "critic.lr", "model.tiny.hidden_size", "algo.value_clip"):
        assert key in rows
    assert rows["critic.lr"][0] == "1.0e-05"
    assert rows["actor.lr"][0] == "1.0e-06"
    assert rows["critic.lr"][0] != rows["actor.lr"][0]
    assert rows["model.tiny.hidden_size"][0] == "64"
    assert rows["actor.betas"][0] == "[0.9, 0.999]"
    assert rows["trainer.run_name"][0] == "null"
    assert "one of ppo, grpo" in rows["algo.name"][1]
    # every section's every field, nested sections expanded
    assert len(rows) == len(_leaf_keys(to_dict(Config())))


def test_reference_defaults_parse_back_to_the_real_defaults():
    flat = dict(_flatten(to_dict(Config())))
    for key, default, _ in reference():
        assert yaml.safe_load(default) == flat[key], key


def _flatten(d: dict, prefix: str = ""):
    for k, v in d.items():
        if isinstance(v, dict):
            yield from _flatten(v, f"{prefix}{k}.")
        else:
            yield f"{prefix}{k}", v


def test_string_fields_keep_the_typed_text_of_numbers():
    cfg = load_config(TINY, ["slurm.time=12:00:00", "trainer.run_name=2024", "actor.lr=1e-4"])
    assert cfg.slurm.time == "12:00:00" and cfg.trainer.run_name == "2024"
    assert cfg.actor.lr == 1e-4
