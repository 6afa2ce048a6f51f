"""Validation and LR schedules end to end: `hpc-ppo run` on configs/tiny-verl.yaml (verl's
parquet layout: chat prompts, nested ground truth, two data sources), real signals, MLflow.

Run: python -m pytest tests/test_validation_run.py -q

Two runs of the same config overlap (2 cores): A uninterrupted on 1 rank; B on 2 ranks,
stopped by SIGTERM between the validations of steps 5 and 10, resumed, and stopped again as
the final validation starts (cut short, it must run again on the next resume).
"""

from __future__ import annotations

import json
import signal
from collections import defaultdict
from pathlib import Path

import pytest
from helpers import REPO, mlflow_runs
from test_preempt_local import Launch, rows

from hpc_ppo.validation import pass_at_k

CONFIG = str(REPO / "configs" / "tiny-verl.yaml")
STEPS = 10
VAL_STEPS = [0, 5, 10]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> tuple[Path, Path, list[str]]:
    tmp = tmp_path_factory.mktemp("val")
    common = [
        f"trainer.total_steps={STEPS}",
        "trainer.run_name=same",
        "trainer.val_sample_prompts=100",  # every prompt's responses: a full hand check
        "reward.pass_threshold=0.125",  # one right letter: some samples pass, some do not
        "rollout.chunks=4",
    ]
    a = Launch(tmp / "a.log", "run", CONFIG, f"trainer.output_dir={tmp}/a", *common)
    b = Launch(
        tmp / "b1.log", "run", CONFIG, f"trainer.output_dir={tmp}/b", "trainer.nprocs=2", *common
    )
    run_a, run_b = tmp / "a" / "same", tmp / "b" / "same"
    logs = []
    # Between the validations of steps 5 and 10.
    b.wait_until(lambda: any(r["step"] == 6 and "reward/mean" in r for r in rows(run_b)))
    b.proc.send_signal(signal.SIGTERM)
    assert b.wait() == 0, b.log
    logs.append(b.log)
    assert f"continue with: hpc-ppo run {run_b}" in b.log, b.log
    assert 5 in val_steps(run_b) and 10 not in val_steps(run_b)
    # Resumed; stopped again as the final validation starts.
    b = Launch(tmp / "b2.log", "run", str(run_b))
    b.wait_until(lambda: "validation of step 10:" in b.log)
    b.proc.send_signal(signal.SIGTERM)
    assert b.wait() == 0, b.log
    logs.append(b.log)
    if "continue with" in b.log:  # cut short (else it had finished: nothing to resume)
        print("the final validation was cut short and redone")
        assert "validation of step 10 cut short by a stop request" in b.log, b.log
        assert 10 not in val_steps(run_b)
        b = Launch(tmp / "b3.log", "run", str(run_b))
        assert b.wait() == 0, b.log
        logs.append(b.log)
        assert "validation of step 10:" in b.log and "continue with" not in b.log
    assert a.wait() == 0, a.log
    return run_a, run_b, logs


def val_steps(run_dir: Path) -> list[int]:
    return [r["step"] for r in rows(run_dir) if "val/reward_mean" in r]


@pytest.mark.slow
def test_validation_steps_are_logged_once_each_with_sources(runs):
    run_a, run_b, _ = runs
    for run_dir in (run_a, run_b):
        assert val_steps(run_dir) == VAL_STEPS  # once each, in metrics.jsonl
        for row in rows(run_dir):
            if "val/reward_mean" in row:
                for key in ("synthetic/letters", "synthetic/sums"):
                    assert f"val/{key}/reward_mean" in row, row
                assert {"val/pass_at_1", "val/pass_at_2", "val/pass_at_4"} <= set(row)
        client, (run,) = mlflow_runs(run_dir)[0], mlflow_runs(run_dir)[1]
        assert run.info.status == "FINISHED"
        for key in ("val/reward_mean", "val/synthetic/sums/reward_mean", "val/pass_at_4"):
            history = client.get_metric_history(run.info.run_id, key)
            assert sorted(m.step for m in history) == VAL_STEPS, key
        # The training metrics too: once per step, across the stops.
        history = client.get_metric_history(run.info.run_id, "reward/mean")
        assert sorted(m.step for m in history) == list(range(STEPS))


@pytest.mark.slow
def test_sample_files_and_mlflow_artifacts(runs):
    _, run_b, _ = runs
    client, (run,) = mlflow_runs(run_b)
    listed = {f.path for f in client.list_artifacts(run.info.run_id, "val")}
    assert listed == {f"val/step_{k}.jsonl" for k in VAL_STEPS}
    for k in VAL_STEPS:
        local = (run_b / "val" / f"step_{k}.jsonl").read_text()
        sent = Path(client.download_artifacts(run.info.run_id, f"val/step_{k}.jsonl"))
        assert sent.read_text() == local


@pytest.mark.slow
def test_pass_at_4_equals_a_hand_check_on_the_sample(runs):
    _, run_b, _ = runs
    logged = {r["step"]: r for r in rows(run_b) if "val/reward_mean" in r}
    for k in VAL_STEPS:
        samples = [
            json.loads(x) for x in (run_b / "val" / f"step_{k}.jsonl").read_text().splitlines()
        ]
        by_prompt = defaultdict(list)
        for s in samples:
            by_prompt[s["index"]].append(s["reward"])
        assert sorted(by_prompt) == list(range(16)) and all(len(v) == 4 for v in by_prompt.values())
        passed = [sum(r >= 0.125 for r in v) for v in by_prompt.values()]
        # pass@4 with 4 samples: the share of prompts with a passing sample
        assert logged[k]["val/pass_at_4"] == pytest.approx(sum(c > 0 for c in passed) / 16)
        assert logged[k]["val/pass_at_2"] == pytest.approx(
            sum(pass_at_k(4, c, 2) for c in passed) / 16
        )
        rewards = [r for v in by_prompt.values() for r in v]
        assert logged[k]["val/reward_mean"] == pytest.approx(sum(rewards) / len(rewards))
    assert any(0 < r["val/pass_at_4"] < 1 for r in logged.values()), logged  # not trivial


@pytest.mark.slow
def test_cosine_schedule_resumed_equals_uninterrupted(runs):
    run_a, run_b, _ = runs

    def lrs(run_dir):
        return {r["step"]: r["actor/lr"] for r in rows(run_dir) if "actor/lr" in r}

    assert sorted(lrs(run_a)) == list(range(STEPS))
    assert lrs(run_b) == lrs(run_a)
    # warmup 2 steps, then a cosine from 1e-3 down towards 1e-4 (min_lr_ratio 0.1)
    lr = lrs(run_a)
    assert [lr[0], lr[1], lr[2]] == pytest.approx([5e-4, 1e-3, 1e-3])
    assert all(lr[s] > lr[s + 1] for s in range(2, STEPS - 1)) and lr[STEPS - 1] > 1e-4
