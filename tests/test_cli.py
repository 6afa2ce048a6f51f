"""Tests for the `hpc-ppo` command line: exit codes, what goes to stdout/stderr, no side effects.

Run: python -m pytest tests/test_cli.py -q
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from helpers import TINY, cli

from hpc_ppo.cli import main
from hpc_ppo.config import load_config


def error_lines(stderr: str, config: str) -> list[str]:
    """The per-error lines under the "error: <config>: invalid configuration" header."""
    lines = stderr.splitlines()
    assert lines[0] == f"error: {config}: invalid configuration"
    assert all(line.startswith("  ") for line in lines[1:]), stderr
    return [line.strip() for line in lines[1:]]


# ---------------------------------------------------------------- validate: success


def test_validate_prints_yaml_that_reloads_to_the_same_config(capsys, tmp_path):
    assert main(["validate", TINY]) == 0
    out, err = capsys.readouterr()
    assert err == ""
    path = tmp_path / "resolved.yaml"
    path.write_text(out)
    assert load_config(path) == load_config(TINY)


def test_validate_applies_overrides(capsys):
    assert main(["validate", TINY, "actor.lr=1e-4", "rollout.n=8"]) == 0
    data = yaml.safe_load(capsys.readouterr().out)
    assert data["actor"]["lr"] == 0.0001
    assert data["rollout"]["n"] == 8


# ---------------------------------------------------------------- validate: bad input


def _bad_inputs(tmp_path: Path) -> list[tuple[list[str], list[str]]]:
    """(overrides, a fragment expected on each error line, in order)."""
    no_config = tmp_path / "model-dir"
    no_config.mkdir()
    bad_jsonl = tmp_path / "p.jsonl"
    bad_jsonl.write_text('{"prompt": "a", "answer": "b"}\nnot json\n')
    return [
        (["actor.lrr=1"], ["actor.lrr: unknown key; did you mean actor.lr?"]),
        (["trainr.total_steps=3"], ["did you mean trainer?"]),
        (["rollout.n=abc"], ["rollout.n='abc': expected an integer"]),
        (["rollout.n=true"], ["rollout.n=True: expected an integer"]),
        (["rollout.n=0"], ["rollout.n=0: must be >= 1 (allowed range [1, 1024])"]),
        (["algo.name=pp0"], ["did you mean ppo?"]),
        (["trainer.batch_size=32", "algo.mini_batch_size=12"], ["must divide trainer.batch_size"]),
        (["algo.mini_batch_size=0"], ["algo.mini_batch_size=0: must be >= 1"]),
        (
            ["trainer.nprocs=3", "trainer.batch_size=24", "algo.mini_batch_size=8"],
            ["must be a multiple of trainer.nprocs=3"],
        ),
        (["algo.name=grpo", "rollout.n=1"], ["rollout.n=1: GRPO needs at least 2"]),
        ([f"model.path={tmp_path / 'missing'}"], ["directory not found"]),
        ([f"model.path={no_config}"], ["no config.json inside"]),
        ([f"data.path={tmp_path / 'x.jsonl'}"], ["file not found"]),
        ([f"data.path={bad_jsonl}"], [f"{bad_jsonl}:2: invalid JSON"]),
        (["reward.fn=nope"], ["reward.fn=nope: unknown built-in reward"]),
        (["rollout.n=abc", "actor.lrr=1"], ["rollout.n='abc'", "actor.lrr"]),
    ]


def test_validate_bad_inputs_exit_2_one_line_each_and_create_nothing(capsys, tmp_path):
    runs = tmp_path / "runs"
    for overrides, fragments in _bad_inputs(tmp_path):
        code = main(["validate", TINY, f"trainer.output_dir={runs}", *overrides])
        out, err = capsys.readouterr()
        assert code == 2, overrides
        assert out == "", overrides
        lines = error_lines(err, TINY)
        assert len(lines) == len(fragments), (overrides, lines)
        for line, fragment in zip(lines, fragments, strict=True):
            assert fragment in line, (overrides, line)
        assert "Traceback" not in err
        assert not runs.exists(), overrides


def test_validate_yaml_file_error(capsys, tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("rollout:\n  temprature: 0.7\n")
    assert main(["validate", str(path)]) == 2
    lines = error_lines(capsys.readouterr().err, str(path))
    assert lines == ["rollout.temprature: unknown key; did you mean rollout.temperature?"]


# ---------------------------------------------------------------- run: bad input


@pytest.mark.parametrize(
    "overrides",
    [["actor.lrr=1"], ["rollout.n=0"], ["trainer.batch_size=32", "algo.mini_batch_size=12"]],
)
def test_run_bad_config_exits_2_and_creates_no_run_folder(capsys, tmp_path, overrides):
    runs = tmp_path / "runs"
    assert main(["run", TINY, f"trainer.output_dir={runs}", *overrides]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert len(error_lines(err, TINY)) == 1
    assert not runs.exists()


# ---------------------------------------------------------------- bad files


@pytest.mark.parametrize("command", ["validate", "run"])
def test_missing_config_file(capsys, tmp_path, command):
    path = str(tmp_path / "nope.yaml")
    assert main([command, path, f"trainer.output_dir={tmp_path / 'runs'}"]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert error_lines(err, path) == [f"config file {path} not found"]
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("command", ["validate", "submit", "render-sbatch"])
def test_a_directory_given_as_the_config_file(capsys, tmp_path, command):
    # Bug fixed: reported as "not found" although it exists (`hpc-ppo run DIR` resumes one).
    assert main([command, str(tmp_path)]) == 2
    assert f"config file {tmp_path} is a directory, expected a YAML file" in capsys.readouterr().err


def test_invalid_yaml(capsys, tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("actor: [1,\n  lr: 2\n")
    assert main(["validate", str(path)]) == 2
    (line,) = error_lines(capsys.readouterr().err, str(path))
    assert line.startswith(f"{path}: invalid YAML")


def test_non_utf8_config_file(capsys, tmp_path):
    path = tmp_path / "c.yaml"
    path.write_bytes(b"\xff\xfe not text")
    assert main(["validate", str(path)]) == 2
    (line,) = error_lines(capsys.readouterr().err, str(path))
    assert "cannot read config file" in line


# ---------------------------------------------------------------- as a real process


def test_module_entry_point_exit_code():
    proc = cli("validate", "configs/tiny-cpu.yaml", "actor.lrr=1", timeout=60)  # cwd: REPO
    assert proc.returncode == 2, proc.stderr
    assert proc.stdout == ""
    assert "did you mean actor.lr?" in proc.stderr
    assert "Traceback" not in proc.stderr


# ---------------------------------------------------------------- validate --launcher


def test_validate_checks_slurm_values_and_reports_every_one(capsys):
    # Bug fixed: `hpc-ppo validate` passed slurm.time=abc; only submit caught it.
    assert main(["validate", TINY, "slurm.time=abc", "slurm.mem=lots"]) == 2
    out, err = capsys.readouterr()
    lines = error_lines(err, TINY)
    assert out == "" and len(lines) == 2
    assert lines[0].startswith("slurm.time='abc': expected minutes")
    assert lines[1].startswith("slurm.mem='lots'")


def test_validate_launcher_picks_the_world_checked(capsys):
    assert main(["validate", TINY, "slurm.nodes=3"]) == 0  # `hpc-ppo run`: 1 rank
    capsys.readouterr()
    # the option may stand anywhere among the overrides, like --dry-run
    assert main(["validate", TINY, "--launcher", "slurm", "slurm.nodes=3"]) == 2
    err = capsys.readouterr().err
    assert err.splitlines()[0] == f"error: {TINY}: invalid configuration for Slurm"
    assert "must be a multiple of the Slurm world size 3" in err
    assert main(["validate", TINY, "trainer.nprocs=3", "--launcher=local"]) == 2
    assert "must be a multiple of trainer.nprocs=3" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["../escaped", "/tmp/hpc-ppo-escaped", "a/b"])
def test_run_cannot_create_a_run_folder_outside_output_dir(capsys, tmp_path, monkeypatch, name):
    # Bug fixed: the run folder was output_dir / run_name, so ../x or an absolute path left it.
    monkeypatch.chdir(tmp_path)
    runs = tmp_path / "runs"
    assert main(["run", TINY, f"trainer.output_dir={runs}", f"trainer.run_name={name}"]) == 2
    (line,) = error_lines(capsys.readouterr().err, TINY)
    assert line.startswith(f"trainer.run_name={name!r}: ")
    assert list(tmp_path.iterdir()) == [] and not Path("/tmp/hpc-ppo-escaped").exists()


def test_small_cli_answers(tmp_path, capsys):
    """--version, a bare `hpc-ppo`, and validate on a run folder (read-only)."""
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0 and capsys.readouterr().out.startswith("hpc-ppo 0.1.0")
    assert main([]) == 0
    assert "{validate,run,export-hf" in capsys.readouterr().out
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "config.yaml").write_text(Path(TINY).read_text())
    before = (run_dir / "config.yaml").read_text()
    assert main(["validate", str(run_dir), "trainer.total_steps=7"]) == 0
    assert "total_steps: 7" in capsys.readouterr().out
    assert main(["validate", str(run_dir), "trainer.profile_steps=[3]"]) == 0  # only watches
    capsys.readouterr()
    assert (run_dir / "config.yaml").read_text() == before  # validate never writes
    assert main(["validate", str(run_dir), "algo.clip_ratio=0.3"]) == 2
    assert "algo.clip_ratio: cannot change when resuming" in capsys.readouterr().err
