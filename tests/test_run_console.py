"""What a user watches: `hpc-ppo run ... > log 2>&1` (no TTY), RUN_DIR/run.log, the MLflow run.

Run: python -m pytest tests/test_run_console.py -q

A Slurm log is a redirect: one whole line per step, no `\\r` bar; the start block names the
`mlflow ui` command and the run's page; MLflow holds the config artifact, the git commit and
the verl-style statistics (issue #14).
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from helpers import REPO, TINY, local_env, metrics, mlflow_run

from hpc_ppo.runlog import LOG_FILE

STEPS = 3
SMALL = ("trainer.batch_size=8", "algo.mini_batch_size=8")  # a fast step on a busy CI host
STEP_LINE = re.compile(r"INFO hpc_ppo\.progress: step (\d+)/(\d+) \| reward ")


def run_redirected(log: Path, *args: str) -> tuple[int, str]:
    """`hpc-ppo ARGS > log 2>&1`: stdout and stderr into one file, as sbatch writes them."""
    with open(log, "w") as f:
        rc = subprocess.run(
            [sys.executable, "-m", "hpc_ppo.cli", *args],
            cwd=REPO,
            env=local_env(),
            stdout=f,
            stderr=subprocess.STDOUT,
            timeout=300,
        ).returncode
    return rc, log.read_text()


def step_numbers(text: str) -> list[int]:
    return [int(m.group(1)) for m in STEP_LINE.finditer(text)]


def git_head() -> str | None:
    proc = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True)
    return proc.stdout.decode().strip() if proc.returncode == 0 else None


def test_redirected_run_logs_one_line_per_step_and_fills_mlflow(tmp_path: Path) -> None:
    rc, text = run_redirected(
        tmp_path / "log",
        "run",
        TINY,
        f"trainer.output_dir={tmp_path}",
        f"trainer.total_steps={STEPS}",
        *SMALL,
    )
    assert rc == 0, text[-4000:]
    assert "\r" not in text
    assert step_numbers(text) == list(range(1, STEPS + 1)), text
    for line in text.splitlines():  # nothing glued onto a step line
        if STEP_LINE.search(line):
            assert line.count("hpc_ppo.progress") == 1 and " eta " in line, line
    run_dir = Path(text.strip().splitlines()[-1].removeprefix("run_dir: "))
    url = re.search(
        r"mlflow run\s+http://127\.0\.0\.1:5000/#/experiments/(\w+)/runs/(\w+)/model-metrics"
        r"\?workflowType=machine_learning\n",
        text,
    )
    assert url and f"mlflow ui --backend-store-uri sqlite:///{run_dir}/mlflow.db" in text, text
    assert "rank(s) on 1 node(s)" in text and "policy" in text and "torch " in text

    run_log = (run_dir / LOG_FILE).read_text()
    assert step_numbers(run_log) == list(range(1, STEPS + 1))
    assert "[restart 0] [rank 0]" in run_log

    client, run = mlflow_run(run_dir)
    assert (url.group(1), url.group(2)) == (run.info.experiment_id, run.info.run_id)
    exp = client.get_experiment(run.info.experiment_id)
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"  # UI opens on runs
    assert [f.path for f in client.list_artifacts(run.info.run_id, "config")] == [
        "config/config.yaml"
    ]
    commit = git_head()
    if commit:  # this checkout is a git checkout in CI; an unpacked sdist is not
        assert run.data.tags["mlflow.source.git.commit"] == commit
        assert run.data.tags["mlflow.source.name"] == str(REPO)
    assert run.data.tags["code.version"]
    for key in (
        "response/length_min",
        "response/length_max",
        "response/clip_ratio",
        "prompt/length_mean",
        "critic/advantages_mean",
        "critic/returns_max",
        "critic/vf_explained_var",
    ):
        history = client.get_metric_history(run.info.run_id, key)
        assert sorted(m.step for m in history) == list(range(STEPS)), key


def test_stop_and_resume_keep_one_log_file_and_one_tensorboard_value_per_step(
    tmp_path: Path,
) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    steps = 4
    run_dir = tmp_path / "r"
    args = [TINY, f"trainer.output_dir={tmp_path}", "trainer.run_name=r", *SMALL]
    args += [f"trainer.total_steps={steps}", "tracking.tensorboard=true"]
    with open(tmp_path / "log1", "w") as f:
        proc = subprocess.Popen(
            [sys.executable, "-m", "hpc_ppo.cli", "run", *args],
            cwd=REPO,
            env=local_env(),
            stdout=f,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 240
        while len(metrics(run_dir, live=True)) < 2 and proc.poll() is None:
            assert time.monotonic() < deadline, (tmp_path / "log1").read_text()
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=240) == 0, (tmp_path / "log1").read_text()
    first = (tmp_path / "log1").read_text()
    assert "stopped and saved" in first and "\r" not in first, first
    stopped_at = max(step_numbers(first))
    assert stopped_at < steps, first

    # The second start of the run folder is restart 1, as a requeued job's would be.
    with open(tmp_path / "log2", "w") as f:
        rc = subprocess.run(
            [sys.executable, "-m", "hpc_ppo.cli", "run", str(run_dir)],
            cwd=REPO,
            env=local_env(),
            stdout=f,
            stderr=subprocess.STDOUT,
            timeout=240,
        ).returncode
    second = (tmp_path / "log2").read_text()
    assert rc == 0, second
    assert step_numbers(second) == list(range(stopped_at + 1, steps + 1)), second

    run_log = (run_dir / LOG_FILE).read_text()
    assert step_numbers(run_log) == list(range(1, steps + 1)), run_log  # both parts, in order
    first_part, _, second_part = run_log.partition("[restart 1]")
    assert "[restart 0] [rank 0]" in first_part and second_part, run_log
    assert "[restart 0]" not in second_part and "[restart 2]" not in run_log, run_log

    jsonl_steps: dict[str, list[int]] = {}
    for row in metrics(run_dir):
        for key, value in row.items():
            if key not in ("step", "time") and value is not None:
                jsonl_steps.setdefault(key, []).append(row["step"])
    events = EventAccumulator(str(run_dir / "tensorboard"), purge_orphaned_data=False).Reload()
    tags = events.Tags()["scalars"]
    assert set(tags) == set(jsonl_steps) and "critic/vf_explained_var" in tags
    assert len(list((run_dir / "tensorboard").glob("events.out.tfevents.*"))) == 2  # one a job
    for tag in tags:
        assert [e.step for e in events.Scalars(tag)] == jsonl_steps[tag], tag
    assert jsonl_steps["reward/mean"] == list(range(steps))
