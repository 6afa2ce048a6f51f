"""hpc_ppo.config.validate: field checks (ranges, choices, finite numbers) and the rules across
fields, each error one line naming key, value and fix.

Run: python -m pytest tests/config/test_validate.py -q
"""

from __future__ import annotations

import pytest

from hpc_ppo.config import Config, TrainerConfig, load_config, validate


def test_range_error_names_key_bound_and_range(tiny, errors_of):
    (line,) = errors_of(tiny, ["rollout.n=0"])
    assert line.startswith("rollout.n=0")
    assert ">= 1" in line
    assert "allowed range [1, 1024]" in line


def test_upper_bound_and_open_interval(tiny, errors_of):
    (line,) = errors_of(tiny, ["rollout.n=2000"])
    assert "<= 1024" in line and "[1, 1024]" in line
    (line,) = errors_of(tiny, ["actor.lr=0"])
    assert line.startswith("actor.lr=0") and "(0.0, 1.0)" in line


def test_choice_error_suggests_the_close_one(tiny, errors_of):
    (line,) = errors_of(tiny, ["algo.name=pp0"])
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
def test_zero_divisor_is_a_range_error_not_a_crash(override, key, tiny, errors_of):
    # Bug fixed: the cross-field divisibility rules raised ZeroDivisionError.
    (line,) = errors_of(tiny, [override])
    assert line.startswith(key) and ">= 1" in line


@pytest.mark.parametrize("value", ["inf", ".inf", "nan", ".nan"])
def test_non_finite_float_is_rejected(value, tiny, errors_of):
    # Bug fixed: weight_decay=inf passed (only a lower bound).
    (line,) = errors_of(tiny, [f"actor.weight_decay={value}"])
    assert line.startswith("actor.weight_decay=") and "finite" in line


@pytest.mark.parametrize("betas", ["[0.9,1.0]", "[1.5,0.9]", "[-0.1,0.9]", "[nan,0.9]"])
def test_betas_outside_unit_interval(betas, tiny, errors_of):
    # Bug fixed: betas were unchecked, so the optimizer failed only after start-up.
    (line,) = errors_of(tiny, [f"critic.betas={betas}"])
    assert line.startswith("critic.betas=") and "[0, 1)" in line


def test_mini_batch_must_divide_batch(tiny, errors_of):
    (line,) = errors_of(tiny, ["trainer.batch_size=32", "algo.mini_batch_size=12"])
    assert "algo.mini_batch_size=12" in line and "trainer.batch_size=32" in line
    assert "divide" in line


def test_mini_batch_must_be_multiple_of_nprocs(tiny, errors_of):
    (line,) = errors_of(
        tiny,
        ["trainer.nprocs=3", "algo.mini_batch_size=8", "trainer.batch_size=24"],
        launcher="local",
    )
    assert "algo.mini_batch_size=8" in line and "trainer.nprocs=3" in line
    assert "multiple" in line


def test_grpo_needs_two_samples(tiny, errors_of):
    (line,) = errors_of(tiny, ["algo.name=grpo", "rollout.n=1"])
    assert line.startswith("rollout.n=1") and "GRPO" in line
    assert load_config(tiny, ["algo.name=grpo", "rollout.n=2"]).algo.name == "grpo"


def test_tensorboard_without_its_package_names_the_extra(tiny, errors_of, monkeypatch):
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name: None if name == "tensorboard" else find_spec(name)
    )
    (line,) = errors_of(tiny, ["tracking.tensorboard=true"])
    assert line.startswith("tracking.tensorboard=true") and "hpc-ppo[tensorboard]" in line


def test_model_path_not_found(tmp_path, tiny, errors_of):
    missing = tmp_path / "no-such-model"
    lines = errors_of(tiny, [f"model.path={missing}"])
    assert len(lines) == 1
    assert lines[0].startswith(f"model.path={missing}") and "not found" in lines[0]


def test_model_path_without_config_json(tmp_path, tiny, errors_of):
    lines = errors_of(tiny, [f"model.path={tmp_path}"])
    assert len(lines) == 1
    assert lines[0].startswith(f"model.path={tmp_path}") and "config.json" in lines[0]


def test_model_path_with_config_json_passes(tmp_path, tiny):
    (tmp_path / "config.json").write_text("{}")
    assert load_config(tiny, [f"model.path={tmp_path}"]).model.path == str(tmp_path)


def test_critic_path_without_config_json(tmp_path, tiny, errors_of):
    (line,) = errors_of(tiny, [f"model.critic_path={tmp_path}"])
    assert line.startswith(f"model.critic_path={tmp_path}") and "config.json" in line


def test_data_path_missing_file(tmp_path, tiny, errors_of):
    missing = tmp_path / "nope.jsonl"
    assert errors_of(tiny, [f"data.path={missing}"]) == [f"data.path={missing}: file not found"]


def test_data_path_malformed_jsonl_line_names_file_and_line(tmp_path, tiny, errors_of):
    path = tmp_path / "p.jsonl"
    path.write_text('{"prompt": "a", "answer": "b"}\n{"prompt": oops}\n')
    (line,) = errors_of(tiny, [f"data.path={path}"])
    assert f"{path}:2:" in line and "invalid JSON" in line


def test_data_path_valid_jsonl(tmp_path, tiny):
    path = tmp_path / "p.jsonl"
    path.write_text('{"prompt": "a", "answer": "b"}\n')
    cfg = load_config(tiny, [f"data.path={path}", "trainer.batch_size=1", "algo.mini_batch_size=1"])
    assert cfg.data.path == str(path)


def test_fewer_prompts_than_a_batch_is_refused(tmp_path, tiny, errors_of):
    path = tmp_path / "p.jsonl"
    path.write_text('{"prompt": "a", "answer": "b"}\n' * 5)
    (line,) = errors_of(
        tiny, [f"data.path={path}", "trainer.batch_size=8", "algo.mini_batch_size=8"]
    )
    assert line == (
        f"data.path={path} holds 5 prompts, fewer than trainer.batch_size=8 (prompts per step): "
        "lower trainer.batch_size or add prompts"
    )
    (line,) = errors_of(
        tiny, ["data.synthetic.num_prompts=7", "trainer.batch_size=8", "algo.mini_batch_size=8"]
    )
    assert line.startswith("data.synthetic.num_prompts=7, fewer than trainer.batch_size=8")


def test_an_empty_prompt_is_refused_with_its_line(tmp_path, tiny, errors_of):
    path = tmp_path / "p.jsonl"
    path.write_text('{"prompt": "a", "answer": "b"}\n{"prompt": "  ", "answer": "c"}\n')
    (line,) = errors_of(tiny, [f"data.path={path}"])
    assert f"{path}:2: the prompt is empty" in line, line


def test_unknown_reward_fn(tiny, errors_of):
    (line,) = errors_of(tiny, ["reward.fn=leters"])
    assert line.startswith("reward.fn=leters") and "did you mean 'letters'" in line


@pytest.mark.parametrize("lengths", ["[0,5]", "[6,5]", "[2,11]"])
def test_forced_lengths_must_fit_max_new_tokens(lengths, tiny, errors_of):
    (line,) = errors_of(tiny, [f"rollout.forced_lengths={lengths}", "rollout.max_new_tokens=10"])
    assert line.startswith("rollout.forced_lengths=") and "rollout.max_new_tokens=10" in line
    assert "rollout.forced_lengths=[1,10]" in line
    ok = load_config(tiny, ["rollout.forced_lengths=[1,10]", "rollout.max_new_tokens=10"])
    assert ok.rollout.forced_lengths == (1, 10)


def test_profile_steps_must_be_steps_that_run(tiny, errors_of):
    (line,) = errors_of(tiny, ["trainer.profile_steps=[1,4,-1]", "trainer.total_steps=4"])
    assert line.startswith("trainer.profile_steps=[1, 4, -1]") and "[4, -1] never run" in line
    assert "0 .. 3" in line
    assert load_config(tiny, ["trainer.profile_steps=[3]"]).trainer.profile_steps == [3]


def test_synthetic_min_len_above_max_len(tiny, errors_of):
    (line,) = errors_of(tiny, ["data.synthetic.max_len=6", "data.synthetic.min_len=7"])
    assert "data.synthetic.min_len=7" in line and "data.synthetic.max_len=6" in line


def test_tiny_heads_must_divide_hidden(tiny, errors_of):
    (line,) = errors_of(
        tiny,
        [
            "model.tiny.hidden_size=64",
            "model.tiny.num_attention_heads=5",
            "model.tiny.num_key_value_heads=1",
        ],
    )
    assert "model.tiny.num_attention_heads=5" in line and "hidden_size=64" in line


def test_vllm_on_cpu(tiny, errors_of):
    (line,) = errors_of(tiny, ["rollout.engine=vllm"])
    assert "rollout.engine=vllm" in line and "trainer.device" in line


def test_field_and_cross_field_errors_together(tmp_path, tiny, errors_of):
    lines = errors_of(
        tiny,
        ["rollout.n=0", "reward.fn=nope", f"data.path={tmp_path / 'x.jsonl'}"],
    )
    assert len(lines) == 3
    assert sorted(line.split("=")[0] for line in lines) == ["data.path", "reward.fn", "rollout.n"]


# ---------------------------------------------------------------- Slurm values (any launcher)


@pytest.mark.parametrize("launcher", [None, "local", "slurm"])
def test_a_malformed_slurm_time_fails_for_every_launcher(tiny, errors_of, launcher):
    # Bug fixed: only submit / render-sbatch checked slurm.*, so `hpc-ppo validate` passed it.
    (line,) = errors_of(tiny, ["slurm.time=abc"], launcher=launcher)
    assert line.startswith("slurm.time='abc': expected minutes, MM:SS, HH:MM:SS, D-HH")


@pytest.mark.parametrize(
    "text, reason",
    [
        ("99:99:99", "minutes=99 must be below 60"),
        ("1:60", "seconds=60 must be below 60"),
        ("1:00:60", "seconds=60 must be below 60"),
        ("1-24", "hours=24 must be below 24"),
        ("1-00:60", "minutes=60 must be below 60"),
        ("1-00:00:60", "seconds=60 must be below 60"),
    ],
)
def test_slurm_time_parts_out_of_range(tiny, errors_of, text, reason):
    (line,) = errors_of(tiny, [f"slurm.time={text}"])
    assert line.startswith(f"slurm.time='{text}': {reason}; expected minutes, MM:SS")


@pytest.mark.parametrize("text", ["100", "90:00", "48:00:00", "1-23", "2-23:59:59", "0-1:05"])
def test_slurm_time_leading_part_is_unbounded(tiny, text):
    assert load_config(tiny, [f"slurm.time={text}"]).slurm.time == text


def test_two_bad_slurm_values_are_both_reported(tiny, errors_of):
    lines = errors_of(tiny, ["slurm.time=99:99:99", "slurm.mem=lots"])
    assert [line.split("=")[0] for line in lines] == ["slurm.time", "slurm.mem"]


# ---------------------------------------------------------------- the launcher's world


def test_world_rules_need_the_launcher(tiny, errors_of):
    """A saved config read back by a rank (launcher None) is not checked against a world: the
    launcher did that before starting it."""
    overrides = ["trainer.nprocs=3", "slurm.nodes=3"]  # mini_batch_size=8 divides neither
    assert load_config(tiny, overrides).trainer.nprocs == 3
    (line,) = errors_of(tiny, overrides, launcher="local")
    assert "multiple of trainer.nprocs=3" in line
    (line,) = errors_of(tiny, overrides, launcher="slurm")
    assert "multiple of the Slurm world size 3" in line


VLLM_TP2 = ["rollout.engine=vllm", "trainer.device=cuda", "rollout.tp=2", "slurm.gpus_per_node=8"]


def test_tp_rule_counts_the_ranks_of_the_launcher(tiny, errors_of):
    # Bug fixed: the local check guessed the launcher from slurm.gpus_per_node, so
    # `hpc-ppo run` with 1 rank passed rollout.tp=2 whenever a Slurm section asked for GPUs.
    (line,) = errors_of(tiny, VLLM_TP2, launcher="local")
    assert line == (
        "rollout.tp=2 must divide trainer.nprocs=1: each tensor-parallel group is 2"
        " consecutive ranks; lower rollout.tp or start more ranks"
    )
    assert load_config(tiny, [*VLLM_TP2, "trainer.nprocs=2"], launcher="local").rollout.tp == 2
    assert load_config(tiny, VLLM_TP2, launcher="slurm").slurm.world_size == 8
    (line,) = errors_of(tiny, [*VLLM_TP2, "rollout.tp=3"], launcher="slurm")
    assert line.startswith("rollout.tp=3 must divide slurm.gpus_per_node=8")


def test_the_engine_checks_tp_with_the_same_rule():
    from hpc_ppo.config import tp_error
    from hpc_ppo.rollout.vllm_engine import check_tp

    check_tp(2, 4)
    with pytest.raises(ValueError) as info:
        check_tp(2, 3)
    assert str(info.value) == tp_error(2, 3, "this job's 3 rank(s)")
    assert str(info.value).startswith("rollout.tp=2 must divide this job's 3 rank(s)")


# ---------------------------------------------------------------- trainer.run_name


@pytest.mark.parametrize(
    "name, problem",
    [
        ("", "is empty"),
        ("  ", "is empty"),
        ("/tmp/elsewhere", "is an absolute path"),
        ("a/b", "contains a path separator"),
        ("../up", "contains a path separator"),
        ("a\\b", "contains a path separator"),
        ("..", "starts with a dot"),
        (".hidden", "starts with a dot"),
        ("a\nb", "contains a control character"),
        ("a\tb", "contains a control character"),
        ("a\x00b", "contains a control character"),
    ],
)
def test_run_name_must_be_one_safe_folder_name(name, problem):
    # Bug fixed: trainer.run_name=../x or /abs put the run folder outside trainer.output_dir.
    cfg = Config(trainer=TrainerConfig(run_name=name))
    (line,) = validate(cfg)
    assert line.startswith(f"trainer.run_name={name!r}: {problem}")
    assert line.endswith("use a plain name such as exp1 (or null for <config stem>-<timestamp>)")


@pytest.mark.parametrize("name", ["exp1", "qwen2.5-0.5b_grpo", "2024", "a b", "x..y", "r;$(q)"])
def test_run_name_may_hold_any_other_folder_name(name):
    assert validate(Config(trainer=TrainerConfig(run_name=name))) == []
