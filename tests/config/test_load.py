"""hpc_ppo.config.load: YAML files and overrides of every type into the tree, type errors,
bad files, and the tree written back (YAML, flat params).

Run: python -m pytest tests/config/test_load.py -q
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
    flatten,
    load_config,
    save_config,
    to_dict,
    validate,
)
from hpc_ppo.config.reference import reference


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_tiny_cpu_yaml_loads_with_its_values(tiny, leaves):
    cfg = load_config(tiny)
    assert validate(cfg) == []
    # The CPU demo: builtin model, synthetic letters task, no GPU.
    assert cfg.model.path == BUILTIN_TINY_MODEL
    assert cfg.data.path is None and cfg.reward.fn == "letters"
    assert cfg.trainer.device == "cpu" and cfg.rollout.engine == "hf"
    # Every value written in the file is the one loaded (numbers compared as numbers).
    loaded = leaves(to_dict(cfg))
    written = leaves(yaml.safe_load(tiny.read_text()))
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


def test_float_override_in_yaml11_exponent_form_becomes_float(tiny):
    cfg = load_config(tiny, ["actor.lr=1e-4"])
    assert cfg.actor.lr == 0.0001
    assert type(cfg.actor.lr) is float


def test_float_in_yaml_file_written_as_1e_minus_4(tmp_path):
    cfg = load_config(write(tmp_path / "c.yaml", "actor:\n  lr: 1e-4\n"))
    assert cfg.actor.lr == 0.0001 and type(cfg.actor.lr) is float


def test_int_given_for_float_becomes_float(tiny):
    cfg = load_config(tiny, ["algo.gamma=1"])
    assert cfg.algo.gamma == 1.0 and type(cfg.algo.gamma) is float


def test_int_override(tiny):
    cfg = load_config(tiny, ["rollout.n=8"])
    assert cfg.rollout.n == 8 and type(cfg.rollout.n) is int


@pytest.mark.parametrize("text, expected", [("true", True), ("false", False)])
def test_bool_override(text, expected, tiny):
    cfg = load_config(tiny, [f"model.gradient_checkpointing={text}"])
    assert cfg.model.gradient_checkpointing is expected


def test_null_override(tiny):
    assert load_config(tiny, ["algo.value_clip=null"]).algo.value_clip is None
    assert load_config(tiny, ["trainer.run_name=null"]).trainer.run_name is None


def test_tuple_override(tiny):
    cfg = load_config(tiny, ["actor.betas=[0.9,0.95]"])
    assert cfg.actor.betas == (0.9, 0.95)
    assert isinstance(cfg.actor.betas, tuple)


def test_tuple_of_wrong_length_is_rejected(tiny, errors_of):
    (line,) = errors_of(tiny, ["actor.betas=[0.9]"])
    assert line.startswith("actor.betas=") and "expected a list of 2 numbers" in line


def test_string_overrides(tiny):
    cfg = load_config(
        tiny,
        ["trainer.run_name=exp1", "reward.fn=exact_match", "tracking.uri=http://host:5000"],
    )
    assert cfg.trainer.run_name == "exp1"
    assert cfg.reward.fn == "exact_match"
    assert cfg.tracking.uri == "http://host:5000"


def test_empty_string_override(tiny):
    assert load_config(tiny, ["tracking.experiment="]).tracking.experiment == ""


def test_override_creates_nested_sections_missing_from_the_file(tmp_path):
    path = write(tmp_path / "c.yaml", "trainer:\n  total_steps: 3\n")
    overrides = ["data.synthetic.num_prompts=40", "model.tiny.hidden_size=32"]
    cfg = load_config(path, overrides)
    assert cfg.data.synthetic.num_prompts == 40
    assert cfg.data.synthetic.max_len == 6  # siblings keep their defaults
    assert cfg.model.tiny.hidden_size == 32
    assert cfg.trainer.total_steps == 3


def test_later_override_wins(tiny):
    assert load_config(tiny, ["rollout.n=2", "rollout.n=6"]).rollout.n == 6


def test_override_without_equals_sign(tiny, errors_of):
    (line,) = errors_of(tiny, ["rollout.n"])
    assert "'rollout.n'" in line and "expected key=value" in line


def test_override_through_a_value(tiny, errors_of):
    (line,) = errors_of(tiny, ["actor.lr.x=1"])
    assert "actor.lr.x" in line and "lr is a value, not a section" in line


def test_string_fields_keep_the_typed_text_of_numbers(tiny):
    cfg = load_config(tiny, ["slurm.time=12:00:00", "trainer.run_name=2024", "actor.lr=1e-4"])
    assert cfg.slurm.time == "12:00:00" and cfg.trainer.run_name == "2024"
    assert cfg.actor.lr == 1e-4


def test_unknown_key_override_suggests_the_close_one(tiny, errors_of):
    (line,) = errors_of(tiny, ["actor.lrr=1"])
    assert "actor.lrr" in line
    assert "did you mean actor.lr" in line


def test_misspelled_section_suggests_trainer(tiny, errors_of):
    (line,) = errors_of(tiny, ["trainr.total_steps=3"])
    assert line.startswith("trainr")
    assert "did you mean trainer" in line


def test_unknown_key_in_yaml_file(tmp_path, errors_of):
    path = write(tmp_path / "c.yaml", "rollout:\n  temprature: 0.7\n")
    (line,) = errors_of(path, [])
    assert "rollout.temprature" in line
    assert "did you mean rollout.temperature" in line


def test_unknown_key_without_close_match_lists_valid_keys(tiny, errors_of):
    (line,) = errors_of(tiny, ["reward.zzzzzz=1"])
    assert "reward.zzzzzz" in line and "valid keys: fn" in line


def test_scalar_where_a_section_belongs(tiny, errors_of):
    (line,) = errors_of(tiny, ["actor=1"])
    assert line.startswith("actor:") and "expected a section" in line


def test_type_error_names_key_and_expected_type(tiny, errors_of):
    assert errors_of(tiny, ["rollout.n=abc"]) == ["rollout.n='abc': expected an integer"]


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
def test_wrong_types_are_rejected(override, fragment, tiny, errors_of):
    """A number typed for a string field is kept as typed text (slurm.time=12:00:00), so the
    field's own check (here: choices) reports it."""
    (line,) = errors_of(tiny, [override])
    assert fragment in line


def test_all_errors_are_reported_together(tiny, errors_of):
    lines = errors_of(tiny, ["rollout.n=abc", "actor.lrr=1"])
    assert len(lines) == 2
    assert any(line.startswith("rollout.n='abc'") for line in lines)
    assert any("actor.lrr" in line for line in lines)


def test_missing_config_file(tmp_path, errors_of):
    lines = errors_of(tmp_path / "nope.yaml", [])
    assert lines == [f"config file {tmp_path / 'nope.yaml'} not found"]


def test_invalid_yaml_is_one_line(tmp_path, errors_of):
    lines = errors_of(write(tmp_path / "c.yaml", "actor: [1,\n  lr: 2\n"), [])
    assert len(lines) == 1 and "invalid YAML" in lines[0]


def test_top_level_not_a_mapping(tmp_path, errors_of):
    (line,) = errors_of(write(tmp_path / "c.yaml", "- a\n- b\n"), [])
    assert "top level must be a mapping" in line and "list" in line


def test_non_utf8_config_file(tmp_path, errors_of):
    # Bug fixed: a binary or Latin-1 file raised UnicodeDecodeError instead of ConfigError.
    path = tmp_path / "c.yaml"
    path.write_bytes(b"trainer:\n  run_name: caf\xe9\n")
    (line,) = errors_of(path, [])
    assert str(path) in line and "cannot read" in line


def test_save_and_load_round_trip(tmp_path, tiny):
    cfg = load_config(
        tiny,
        ["actor.lr=1e-4", "actor.betas=[0.9,0.95]", "algo.value_clip=null", "trainer.run_name=x"],
    )
    path = tmp_path / "config.yaml"
    save_config(cfg, path)
    assert load_config(path) == cfg
    assert not path.with_suffix(".yaml.tmp").exists()


def test_defaults_round_trip_through_dump_yaml(tmp_path):
    cfg = Config()
    assert load_config(write(tmp_path / "c.yaml", dump_yaml(cfg))) == cfg


def test_dump_yaml_reloads_with_every_leaf(tiny, leaves):
    cfg = load_config(tiny, ["critic.lr=3e-5"])
    data = yaml.safe_load(dump_yaml(cfg))
    assert data == to_dict(cfg)
    assert data["critic"]["lr"] == 3e-5
    assert data["actor"]["betas"] == [0.9, 0.999]  # tuples are written as lists
    assert {row[0] for row in reference()} == set(leaves(data))


def test_flatten() -> None:
    cfg = {"optim": {"lr": 1e-6, "betas": [0.9, 0.95]}, "model": {"name": "q", "lora": None}}
    assert flatten(cfg) == {
        "optim.lr": "1e-06",
        "optim.betas": "[0.9, 0.95]",
        "model.name": "q",
        "model.lora": "None",
    }


# ---------------------------------------------------------------- duplicate keys, sections, folders


def test_duplicate_keys_name_the_key_the_file_and_both_lines(tmp_path, errors_of):
    # Bug fixed: PyYAML keeps the last of two equal keys silently, so the run used actor.lr=2e-4
    # while the file also said 1e-4.
    path = write(
        tmp_path / "c.yaml",
        "actor:\n  lr: 1e-4\n  weight_decay: 0.1\n  lr: 2e-4\ntrainer:\n  total_steps: 3\n"
        "trainer:\n  batch_size: 8\nslurm:\n  setup:\n    - {a: 1, a: 2}\n",
    )
    assert errors_of(path, []) == [
        f"{path}:4: duplicate key actor.lr (first at line 2); keep one of them",
        f"{path}:7: duplicate key trainer (first at line 5); keep one of them",
        f"{path}:11: duplicate key slurm.setup[0].a (first at line 11); keep one of them",
    ]


def test_a_yaml_merge_key_is_not_a_duplicate(tmp_path):
    # `<<: *anchor` then a key of the anchor: the override YAML means, not a duplicate.
    path = write(tmp_path / "c.yaml", "actor: &opt {lr: 1e-4}\ncritic:\n  <<: *opt\n  lr: 3e-5\n")
    cfg = load_config(path)
    assert (cfg.actor.lr, cfg.critic.lr) == (1e-4, 3e-5)


@pytest.mark.parametrize(
    "override, shown",
    [("trainer=8", "8"), ("actor=1e-4", "'1e-4'"), ("model.tiny=2.5", "2.5"), ("data=[1]", "[1]")],
)
def test_override_of_a_section_reports_the_value_typed(tiny, errors_of, override, shown):
    # Bug fixed: the error showed an internal repr, _Typed(value=8, text='8').
    section = override.split("=")[0]
    (line,) = errors_of(tiny, [override])
    assert line.startswith(f"{section}: expected a section (mapping) of keys such as {section}.")
    assert line.endswith(f", got {shown}") and "_Typed" not in line


def test_a_directory_as_the_config_file(tmp_path, errors_of):
    # Bug fixed: a directory was reported as "not found".
    assert errors_of(tmp_path, []) == [
        f"config file {tmp_path} is a directory, expected a YAML file"
    ]
    (tmp_path / "config.yaml").write_text("")  # a run folder
    (line,) = errors_of(tmp_path, [])
    assert line.endswith(f"expected a YAML file (resume a run folder with: hpc-ppo run {tmp_path})")
