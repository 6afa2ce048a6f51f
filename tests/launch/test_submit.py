"""`hpc-ppo submit` without a cluster: parameter mapping, the dry-run script, and a real
submit through submitit against a fake `sbatch` (the boundary). `status`: test_status.py.

Run: python -m pytest tests/launch/test_submit.py -q
"""

from __future__ import annotations

import os
import sys

import pytest
from helpers import CONFIGS, TINY, write_executable

from hpc_ppo.cli import main
from hpc_ppo.config import load_config, time_seconds, validate
from hpc_ppo.errors import ConfigError
from hpc_ppo.launch import status, submit
from hpc_ppo.launch.sbatch import time_minutes

QWEN7B = str(CONFIGS / "qwen2-7b.yaml")
GRPO = str(CONFIGS / "qwen2.5-0.5b-grpo.yaml")


def gpu_cfg(*overrides: str):
    """The 7B config (1 node x 8 GPUs) without its model/data, which this machine lacks."""
    return load_config(QWEN7B, list(overrides), check_paths=False)


@pytest.fixture
def no_slurm(tmp_path, monkeypatch):
    """PATH without sbatch/srun: a laptop or a CI box without Slurm."""
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture
def fake_slurm(tmp_path, monkeypatch):
    """`sbatch` that saves the script it is given and answers like Slurm; `srun` (submitit
    checks for it). FAKE_SBATCH_ERROR makes sbatch fail with that message."""
    bin_dir = tmp_path / "fake-bin"
    bin_dir.mkdir()
    captured = tmp_path / "captured.sbatch"
    write_executable(
        bin_dir / "sbatch",
        f"""#!/bin/sh
if [ -n "$FAKE_SBATCH_ERROR" ]; then
  echo "sbatch: error: $FAKE_SBATCH_ERROR" >&2
  echo "sbatch: error: Batch job submission failed: $FAKE_SBATCH_ERROR" >&2
  exit 1
fi
cp "$1" {captured}
echo "Submitted batch job 4242"
""",
    )
    write_executable(bin_dir / "srun", "#!/bin/sh\nexit 0\n")
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.delenv("FAKE_SBATCH_ERROR", raising=False)
    monkeypatch.chdir(tmp_path)
    return captured


# ---------------------------------------------------------------- parameter mapping


def test_parameters_for_one_node_of_eight_gpus():
    cfg = gpu_cfg("slurm.partition=gpu", "slurm.account=proj", "slurm.qos=high", "slurm.mem=900G")
    p = submit.submitit_parameters(cfg, "my-run")
    assert p["job_name"] == "my-run"
    assert (p["nodes"], p["ntasks_per_node"], p["gpus_per_node"]) == (1, 8, 8)
    assert "gpus_per_task" not in p
    assert p["cpus_per_task"] == 8
    assert p["time"] == 24 * 60  # "24:00:00" in minutes, submitit's unit
    assert p["signal_delay_s"] == 600  # -> --signal=USR2@600
    assert (p["partition"], p["account"], p["qos"], p["mem"]) == ("gpu", "proj", "high", "900G")
    assert p["exclusive"] is True
    assert p["additional_parameters"] == {"requeue": True}
    assert p["srun_args"] == ["--kill-on-bad-exit=1"]
    assert p["stderr_to_stdout"] is True
    assert "constraint" not in p  # unset keys are not passed at all


def test_parameters_bind_one_gpu_per_task_and_no_requeue_and_extras():
    cfg = gpu_cfg(
        "slurm.gpu_binding=task",
        "slurm.nodes=2",
        "slurm.requeue=false",
        "slurm.exclusive=false",
        "slurm.constraint=h100",
        "slurm.extra_sbatch=[--reservation=big, --mail-type=END, --hint=nomultithread]",
    )
    p = submit.submitit_parameters(cfg, "x")
    assert p["gpus_per_task"] == 1 and "gpus_per_node" not in p
    assert (p["nodes"], p["ntasks_per_node"]) == (2, 8)
    assert "exclusive" not in p
    assert p["constraint"] == "h100"
    assert p["additional_parameters"] == {
        "no-requeue": True,
        "reservation": "big",
        "mail-type": "END",
        "hint": "nomultithread",
    }


def test_cpu_job_has_no_gpu_options():
    p = submit.submitit_parameters(load_config(TINY, ["slurm.nodes=2"]), "t")
    assert (p["nodes"], p["ntasks_per_node"]) == (2, 1)
    assert "gpus_per_node" not in p and "gpus_per_task" not in p


@pytest.mark.parametrize(
    ("text", "seconds", "minutes"),
    [
        ("90", 5400, 90),
        ("1:30", 90, 2),
        ("01:00:00", 3600, 60),
        ("2-00", 172800, 2880),
        ("1-02:03", 93780, 1563),
        ("1-00:00:01", 86401, 1441),
    ],
)
def test_slurm_time_formats(text, seconds, minutes):
    assert time_seconds(text) == seconds
    assert time_minutes(text) == minutes


# ---------------------------------------------------------------- dry run


def test_dry_run_script_for_eight_gpus_with_setup(no_slurm):
    cfg = gpu_cfg("slurm.setup=[module load cuda/12.8, source /opt/venv/bin/activate]")
    text = submit.batch_script(cfg, no_slurm / "runs" / "r1")
    lines = text.splitlines()
    for expected in (
        "#SBATCH --nodes=1",
        "#SBATCH --ntasks-per-node=8",
        "#SBATCH --gpus-per-node=8",
        "#SBATCH --cpus-per-task=8",
        "#SBATCH --signal=USR2@600",
        "#SBATCH --requeue",
        "#SBATCH --open-mode=append",
        "#SBATCH --exclusive",
        "#SBATCH --time=1440",
        "#SBATCH --job-name=r1",
        f"#SBATCH --output={no_slurm}/runs/r1/slurm/%j_0_log.out",
    ):
        assert expected in lines, (expected, text)
    assert not any(line.startswith("#SBATCH --error") for line in lines)  # one log per task
    setup = lines.index("module load cuda/12.8")
    assert lines[setup + 1] == "source /opt/venv/bin/activate"
    assert (
        lines.index(
            "unset RANK LOCAL_RANK WORLD_SIZE LOCAL_WORLD_SIZE MASTER_ADDR MASTER_PORT GROUP_RANK"
        )
        < setup
    )
    srun = next(line for line in lines if line.startswith("srun "))
    assert "--kill-on-bad-exit=1" in srun
    # the rank entry itself, not submitit's pickled-function runner (hpc_ppo.launch.submit)
    assert srun.endswith(f"$HPC_PPO_HOLD {sys.executable} -u -m hpc_ppo.rank {no_slurm}/runs/r1")
    assert "HPC_PPO_HOLD=$(env --block-signal=USR2 true" in text


def test_cli_dry_run_of_the_7b_example_without_slurm_or_model(no_slurm, capsys):
    assert main(["submit", QWEN7B, f"trainer.output_dir={no_slurm}/out", "--dry-run"]) == 0
    out, err = capsys.readouterr()
    assert out.startswith("#!/bin/bash\n")
    assert "#SBATCH --ntasks-per-node=8" in out and "#SBATCH --gpus-per-node=8" in out
    assert "warning: model.path=/path/to/Qwen2-7B-Instruct" in err
    assert "warning: data.path=/path/to/gsm8k/train.jsonl" in err
    assert "nothing submitted" in err
    assert not (no_slurm / "out").exists()


@pytest.mark.parametrize("config", [QWEN7B, GRPO])
def test_example_configs_load_apart_from_paths(config):
    cfg = load_config(config, check_paths=False, launcher="slurm")
    assert validate(cfg, launcher="slurm", check_paths=False) == []
    assert cfg.slurm.world_size == 8 and cfg.rollout.engine == "vllm"


def test_real_submit_refuses_missing_model(no_slurm, capsys):
    assert main(["submit", QWEN7B, f"trainer.output_dir={no_slurm}/out"]) == 2
    err = capsys.readouterr().err
    assert "model.path=/path/to/Qwen2-7B-Instruct: directory not found" in err
    assert not (no_slurm / "out").exists()


@pytest.mark.parametrize(
    ("overrides", "fragment"),
    [
        (["slurm.nodes=3"], "algo.mini_batch_size=16 must be a multiple of the Slurm world size 3"),
        (["slurm.tasks_per_node=5"], "Slurm world size 5 (slurm.nodes=1 x 5 tasks per node)"),
        (['slurm.partition="a\\nb"'], "slurm.partition='a\\nb': must be one line"),
        (["slurm.time=1h"], "slurm.time='1h': expected minutes"),
        (
            ['slurm.time="2"', "slurm.signal_lead_s=180"],
            "must be shorter than slurm.time=2 (120 s)",
        ),
        (["slurm.extra_sbatch=[--time=5]"], "--time is set by hpc-ppo; use slurm.time"),
        (["slurm.extra_sbatch=[-p x]"], "expected a long option"),
        (["slurm.mem=lots"], "slurm.mem='lots'"),
        (["slurm.gpu_binding=task"], "slurm.gpu_binding=task needs slurm.gpus_per_node > 0"),
    ],
)
def test_slurm_errors_exit_2_and_create_nothing(no_slurm, capsys, overrides, fragment):
    code = main(["submit", TINY, f"trainer.output_dir={no_slurm}/out", *overrides, "--dry-run"])
    err = capsys.readouterr().err
    assert code == 2
    assert "invalid configuration for Slurm" in err and fragment in err, err
    assert not (no_slurm / "out").exists()


@pytest.mark.parametrize(
    ("overrides", "fragment"),
    [
        (
            ["rollout.tp=4", "slurm.gpus_per_node=2", "slurm.nodes=2"],
            "rollout.tp=4 must divide slurm.gpus_per_node=2",
        ),
        (["slurm.tasks_per_node=4"], "slurm.tasks_per_node=4 must equal slurm.gpus_per_node=8"),
    ],
)
def test_gpu_layout_rules(overrides, fragment):
    with pytest.raises(ConfigError) as info:
        load_config(QWEN7B, overrides, check_paths=False, launcher="slurm")
    errors = str(info.value).splitlines()
    assert any(fragment in e for e in errors)


def test_submit_without_sbatch_exits_1_and_creates_nothing(no_slurm, capsys):
    assert main(["submit", TINY, f"trainer.output_dir={no_slurm}/out"]) == 1
    assert "sbatch/srun not found" in capsys.readouterr().err
    assert not (no_slurm / "out").exists()


# ---------------------------------------------------------------- submit through submitit


def test_submit_hands_sbatch_the_dry_run_script_and_records_the_job(fake_slurm, capsys):
    args = ["submit", TINY, "slurm.nodes=2", "trainer.output_dir=out", "trainer.run_name=r1"]
    assert main([*args, "--dry-run"]) == 0
    dry = capsys.readouterr().out
    assert main(args) == 0
    out = capsys.readouterr().out.splitlines()
    run_dir = (fake_slurm.parent / "out" / "r1").resolve()
    assert out[-2:] == ["job_id: 4242", f"run_dir: {run_dir}"]
    assert f"follow the log: tail -f {run_dir}/slurm/4242_0_log.out" in out
    assert fake_slurm.read_text() == dry  # --dry-run shows exactly what is submitted
    assert (run_dir / "config.yaml").is_file()
    assert status.read_job_id(run_dir) == "4242"
    assert (run_dir.parent / ".jobs" / "4242").read_text().strip() == str(run_dir)
    # nothing pickled: the tasks run `python -m hpc_ppo.rank RUN_DIR`, not submitit's runner
    assert not list((run_dir / "slurm").rglob("*.pkl"))
    assert (run_dir / "slurm" / "4242_submission.sh").read_text() == dry


def test_refused_submit_names_the_key_and_removes_the_run_folder(fake_slurm, capsys, monkeypatch):
    monkeypatch.setenv("FAKE_SBATCH_ERROR", "Invalid partition name specified")
    code = main(["submit", TINY, "slurm.partition=nope", "trainer.output_dir=out"])
    err = capsys.readouterr().err
    assert code == 1
    assert "Batch job submission failed: Invalid partition name specified" in err
    assert "change slurm.partition (now 'nope')" in err
    assert err.count("Invalid partition name specified") == 2  # sbatch's two lines, once each
    assert list((fake_slurm.parent / "out").iterdir()) == []


def test_unknown_sbatch_error_points_at_the_slurm_section():
    cfg = load_config(TINY)
    text = submit.explain_sbatch_error("sbatch: error: something new", cfg)
    assert text.startswith("sbatch: error: something new\n")
    assert "slurm.*" in text


def test_the_private_submitit_api_is_there_and_pinned(monkeypatch):
    """submit goes through two private submitit names: present in the pinned release, and a
    clear error naming the fix when a submitit without them is installed."""
    render, executor = submit.submitit_private_api()
    assert callable(render) and hasattr(executor, "_submit_command")
    setup_cfg = (CONFIGS.parent / "setup.cfg").read_text()
    assert f"submitit{submit.SUBMITIT_TESTED}" in setup_cfg
    from submitit.slurm import slurm

    monkeypatch.delattr(slurm, "_make_sbatch_string")
    with pytest.raises(submit.SubmitError, match=r"install submitit>=1.5.2,<1.6"):
        submit.submitit_private_api()
