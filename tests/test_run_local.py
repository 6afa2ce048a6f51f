"""End to end: `hpc-ppo run` on the embedded default, 1 and 2 ranks, real MLflow store."""

from __future__ import annotations

import pytest
import yaml
from helpers import metrics, mlflow_run


@pytest.mark.slow
def test_two_ranks_one_mlflow_run_with_params_and_one_value_per_step(run_tiny):
    run_dir = run_tiny("trainer.nprocs=2", "trainer.total_steps=3")
    rows = metrics(run_dir)
    assert [r["step"] for r in rows] == [0, 1, 2]
    for key in (
        "reward/mean",
        "reward/std",
        "actor/pg_loss",
        "critic/vf_loss",
        "actor/entropy",
        "actor/clipfrac",
        "response/length_mean",
        "perf/tokens_per_s",
        "time/generate",
        "time/old_logprob",
        "time/values",
        "time/advantages",
        "time/update",
    ):
        assert key in rows[0], key
    # the start-up, by phase, with the process's first step only; imports take a while
    startup = {k: v for k, v in rows[0].items() if k.startswith("startup/")}
    assert len(startup) == 10 and startup["startup/interpreter_and_imports"] > 0.5, startup
    assert startup["startup/trainer_imports"] > 0.1, startup  # transformers, DTensor, DCP
    assert not any(k.startswith("startup/") for r in rows[1:] for k in r)
    assert "INFO hpc_ppo.trainer: start-up " in (run_dir / "run.log").read_text()
    client, run = mlflow_run(run_dir)  # asserts there is exactly one
    resolved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert resolved["trainer"]["nprocs"] == 2
    assert run.data.params["trainer.nprocs"] == "2"
    assert run.data.params["actor.lr"] == str(resolved["actor"]["lr"])
    for key in ("reward/mean", "critic/vf_loss"):
        history = client.get_metric_history(run.info.run_id, key)
        assert sorted(m.step for m in history) == [0, 1, 2]


@pytest.mark.slow
def test_tiny_cpu_learns(run_tiny):
    """The README promise: the last 5 steps beat the first 5 by at least 0.2 mean reward."""
    rows = metrics(run_tiny("trainer.total_steps=40", "trainer.seed=1"))
    first = sum(r["reward/mean"] for r in rows[:5]) / 5
    last = sum(r["reward/mean"] for r in rows[-5:]) / 5
    assert last - first >= 0.2, (first, last)


@pytest.mark.slow
def test_grpo_runs_without_critic(run_tiny):
    rows = metrics(
        run_tiny(
            "algo.name=grpo",
            "trainer.total_steps=2",
            "algo.kl_coef=0.01",
            "algo.kl_mode=loss",
            "algo.kl_estimator=k3",
        )
    )
    assert len(rows) == 2 and "critic/vf_loss" not in rows[0]
    # k3 is >= 0 by construction, so only values can show the reference works: it is the
    # initial policy (no KL before the first update) and the update moved away from it.
    # The k3 number itself: tests/test_advantage_stage.py.
    assert rows[0]["actor/kl_ref"] == 0.0, rows[0]
    assert rows[1]["actor/kl_ref"] > 1e-6, rows[1]


@pytest.mark.slow
def test_padding_free_ppo_on_two_ranks_with_a_token_budget(run_tiny):
    """Packed micro-batches end to end (FSDP over 2 gloo ranks, policy, reference, critic):
    nothing computed is padding, and the padded layout of the same run pads."""
    common = ("trainer.nprocs=2", "trainer.total_steps=2", "algo.kl_coef=0.01")
    budget = "trainer.max_tokens_per_micro_batch=128"
    packed = metrics(run_tiny(*common, budget, "trainer.padding_free=true"))
    padded = metrics(run_tiny(*common, budget, "trainer.padding_free=false"))
    assert [r["perf/padding_fraction"] for r in packed] == [0.0, 0.0]
    assert all(r["perf/padding_fraction"] > 0.0 for r in padded)
    # the same first step (same samples, same weights): old log-probs agree across layouts
    assert packed[0]["actor/logprob_gap"] == pytest.approx(padded[0]["actor/logprob_gap"], abs=1e-5)
