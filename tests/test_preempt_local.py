"""Stop requests on `hpc-ppo run`: real signals to the launcher, real gloo ranks, real MLflow.

Run: python -m pytest tests/test_preempt_local.py -q

A stopped and resumed run must end bitwise identical to an uninterrupted one (weights, metric
history, MLflow), and a stop that arrives mid-rollout must end the job within one step.
"""

from __future__ import annotations

import re
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers import REPO, TINY, final_weights, history, local_env, metrics, mlflow_runs

from hpc_ppo import checkpoint as ckpt
from hpc_ppo.config import load_config
from hpc_ppo.model import build_tokenizer, load_policy

STEPS = 8


class Launch:
    """`hpc-ppo ARGS` in a subprocess, its stdout and stderr in one log file."""

    def __init__(self, log: Path, *args: str):
        self.log_path = log
        with open(log, "w") as f:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "hpc_ppo.cli", *args],
                cwd=REPO,
                env=local_env(),
                stdout=f,
                stderr=subprocess.STDOUT,
                text=True,
            )

    @property
    def log(self) -> str:
        return self.log_path.read_text()

    def wait(self, timeout: float = 300) -> int:
        return self.proc.wait(timeout=timeout)

    def wait_until(self, ready, timeout: float = 300) -> None:
        deadline = time.monotonic() + timeout
        while not ready():
            if self.proc.poll() is not None:
                pytest.fail(f"exited ({self.proc.returncode}) before the condition:\n{self.log}")
            if time.monotonic() > deadline:
                self.proc.kill()
                pytest.fail(f"condition not met within {timeout} s:\n{self.log}")
            time.sleep(0.05)


def rows(run_dir: Path) -> list[dict]:
    """The metrics records so far of a run that may be writing."""
    return metrics(run_dir, live=True)


def stop_with(launch: Launch, run_dir: Path, sig: signal.Signals, after_rows: int) -> int:
    """Signal the launcher once metrics.jsonl has `after_rows` rows; returns the saved step."""
    launch.wait_until(lambda: len(rows(run_dir)) >= after_rows)
    launch.proc.send_signal(sig)
    assert launch.wait() == 0, launch.log
    log = launch.log
    assert f"continue with: hpc-ppo run {run_dir}" in log, log
    assert f"stop requested by {sig.name}" in log, log
    steps = ckpt.complete_steps(run_dir)
    assert steps, f"no complete checkpoint after {sig.name}:\n{log}"
    assert not list(ckpt.checkpoint_root(run_dir).glob("*.tmp")), "a save left its .tmp folder"
    # Nothing done is lost and nothing is ahead of the checkpoint: the saved step is exactly
    # the number of steps with metrics (a step cut short mid-rollout logs nothing).
    assert steps[-1] == len({r["step"] for r in rows(run_dir)}) < STEPS, (steps, log)
    return steps[-1]


@pytest.mark.slow
def test_stopped_twice_and_resumed_equals_uninterrupted_bitwise(tmp_path):
    config = [
        "trainer.nprocs=2",
        f"trainer.total_steps={STEPS}",
        "trainer.save_every=0",
        "rollout.chunks=4",
        "trainer.run_name=same",
    ]
    # A and B overlap: on 2 cores that costs little and saves the startups.
    a = Launch(tmp_path / "a.log", "run", TINY, f"trainer.output_dir={tmp_path}/a", *config)
    b = Launch(tmp_path / "b1.log", "run", TINY, f"trainer.output_dir={tmp_path}/b", *config)
    run_a, run_b = tmp_path / "a" / "same", tmp_path / "b" / "same"

    first = stop_with(b, run_b, signal.SIGTERM, after_rows=2)
    _, runs = mlflow_runs(run_b)
    assert [r.info.status for r in runs] == ["KILLED"]
    b = Launch(tmp_path / "b2.log", "run", str(run_b))
    b.wait_until(lambda: len(rows(run_b)) > first)
    assert f"resumed from {run_b}/checkpoints/step_{first}: {first} of" in b.log, b.log
    second = stop_with(b, run_b, signal.SIGINT, after_rows=first + 2)
    assert second > first
    b = Launch(tmp_path / "b3.log", "run", str(run_b))
    assert b.wait() == 0, b.log
    assert a.wait() == 0, a.log
    assert "continue with" not in b.log + a.log

    assert ckpt.complete_steps(run_a)[-1] == ckpt.complete_steps(run_b)[-1] == STEPS
    wa, wb = final_weights(run_a), final_weights(run_b)
    assert wa.keys() == wb.keys() and any(k.startswith("critic.") for k in wa)
    differ = [k for k in wa if not torch.equal(wa[k], wb[k])]
    assert not differ, f"{len(differ)} tensors differ, e.g. {differ[:3]}"
    # Training moved the weights: equal because it is deterministic, not because nothing ran.
    cfg = load_config(run_a / "config.yaml")
    fresh = load_policy(cfg.model, build_tokenizer(cfg.model), cfg.trainer.seed).state_dict()
    assert not torch.equal(fresh["lm_head.weight"], wa["policy.lm_head.weight"])

    ha, hb = history(rows(run_a)), history(rows(run_b))
    assert sorted(ha) == list(range(STEPS))
    assert ha == hb

    for run_dir, hist in ((run_a, ha), (run_b, ha)):
        client, runs = mlflow_runs(run_dir)
        assert len(runs) == 1, [r.info.run_id for r in runs]
        run = runs[0]
        assert run.info.status == "FINISHED"
        assert run.info.run_id == (run_dir / "mlflow_run_id").read_text().strip()
        assert run.data.tags["launcher"] == "local"
        assert not [t for t in run.data.tags if t.startswith("slurm")], run.data.tags
        keys = {k for r in rows(run_dir) for k in r} - {"step", "time"}
        assert set(run.data.metrics) == keys
        for key in keys:
            points = client.get_metric_history(run.info.run_id, key)
            steps = sorted(m.step for m in points)
            if key == "time/save" or key.startswith("startup/"):  # saves; (re)starts
                assert steps == sorted(r["step"] for r in rows(run_dir) if key in r), key
                continue
            assert steps == list(range(STEPS)), (run_dir.parent.name, key, steps)
            if key in hist[0]:
                assert {m.step: m.value for m in points} == {s: hist[s][key] for s in hist}, key


def _stop_line(log: str) -> tuple[str, int, float, float]:
    m = re.search(
        r"stop requested by (\w+): checkpoint step_(\d+) saved in ([\d.]+) s; "
        r"exiting ([\d.]+) s after the signal",
        log,
    )
    assert m, log
    return m.group(1), int(m.group(2)), float(m.group(3)), float(m.group(4))


@pytest.mark.slow
def test_signal_during_rollout_exits_within_one_step(tmp_path):
    """Long responses from few prompts, so generation is most of a step (with the default
    lengths the PPO update is, and a signal would rarely land in a rollout)."""
    launch = Launch(
        tmp_path / "run.log",
        "run",
        TINY,
        f"trainer.output_dir={tmp_path}",
        "trainer.run_name=r",
        "trainer.nprocs=2",
        "trainer.total_steps=50",
        "trainer.batch_size=16",
        "rollout.n=4",
        "rollout.max_new_tokens=64",
        "rollout.chunks=8",
    )
    run_dir = tmp_path / "r"
    launch.wait_until(lambda: len(rows(run_dir)) >= 2)
    # The next step starts as a row appears: signal a quarter into its rollout. (At once, the
    # signal could beat the between-steps check and test nothing about rollouts.)
    launch.wait_until(lambda: len(rows(run_dir)) >= 3)
    last = rows(run_dir)[-1]
    time.sleep(last["time/wake"] + last["time/push"] + 0.25 * last["time/generate"])
    launch.proc.send_signal(signal.SIGUSR2)
    assert launch.wait() == 0, launch.log
    name, step, save_s, exit_s = _stop_line(launch.log)
    done = rows(run_dir)
    assert name == "SIGUSR2"
    # The step under way was dropped before its update and is saved as not done.
    assert ckpt.complete_steps(run_dir)[-1] == step == len(done), launch.log
    step_s = statistics.median(r["time/step"] for r in done)
    assert exit_s < step_s, f"exited {exit_s:.2f} s after the signal; a step takes {step_s:.2f} s"
    # Before the save, it waited for the chunk under way only, not for the rest of the rollout.
    gen_s = statistics.median(r["time/generate"] for r in done)
    assert exit_s - save_s < gen_s / 2, (exit_s, save_s, gen_s)


# ---------------------------------------------------------------- a stop as a rank starts

# A stand-in for a rank: installs the handlers only after a slow start (torch takes a second).
LATE_INSTALL = """
import os, signal, sys, time
time.sleep(0.5)
from hpc_ppo.preempt import StopFlag
stop = StopFlag().install()
print(stop.signal_name, flush=True)
stop.retire()
os.kill(os.getpid(), signal.SIGTERM)  # as the interpreter exits: ignored, not fatal
"""


def test_a_signal_before_the_handlers_is_kept_until_they_exist():
    """What the launchers do (stop_signals_blocked, `env --block-signal` under srun): the
    signal waits, blocked, instead of killing the process with its default action."""
    from hpc_ppo.preempt import stop_signals_blocked

    cmd = [sys.executable, "-c", LATE_INSTALL]
    with stop_signals_blocked():
        proc = subprocess.Popen(cmd, env=local_env(), stdout=subprocess.PIPE, text=True)
    proc.send_signal(signal.SIGUSR2)
    out, _ = proc.communicate(timeout=60)
    assert (proc.returncode, out) == (0, "SIGUSR2\n")
    # The launchers' own mask is back: the same signal would kill an unprotected child.
    bare = subprocess.Popen(cmd, env=local_env(), stdout=subprocess.PIPE, text=True)
    bare.send_signal(signal.SIGUSR2)
    assert bare.wait(timeout=60) == -signal.SIGUSR2


@pytest.mark.slow
def test_stop_at_rank_start_exits_0_and_the_run_continues(tmp_path):
    """USR2 as soon as the ranks exist (their interpreters start; torch would take a second
    more): they stop before the first step, save nothing, exit 0; the run then continues from
    the start, every step logged once."""
    run_dir = tmp_path / "r"
    args = ["run", TINY, f"trainer.output_dir={tmp_path}", "trainer.run_name=r"]
    launch = Launch(tmp_path / "run.log", *args, "trainer.nprocs=2", "trainer.total_steps=2")
    children = Path(f"/proc/{launch.proc.pid}/task/{launch.proc.pid}/children")
    launch.wait_until(lambda: len(children.read_text().split()) == 2, timeout=60)
    launch.proc.send_signal(signal.SIGUSR2)
    assert launch.wait(timeout=120) == 0, launch.log
    assert "stop requested by SIGUSR2: no step done, nothing saved" in launch.log
    assert f"continue with: hpc-ppo run {run_dir}" in launch.log
    assert ckpt.complete_steps(run_dir) == [] and rows(run_dir) == []

    again = Launch(tmp_path / "again.log", "run", str(run_dir))
    assert again.wait(timeout=300) == 0, again.log
    assert sorted(history(rows(run_dir))) == [0, 1]
    _, runs = mlflow_runs(run_dir)
    assert [r.info.status for r in runs] == ["FINISHED"]
