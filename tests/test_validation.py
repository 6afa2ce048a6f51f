"""The validation stage (validation.py): when it runs, sharding, pass@k, and its bookkeeping
with a fake engine (no model, no process group).

Run: python -m pytest tests/test_validation.py -q

End to end (verl parquet, stop and resume, MLflow): tests/test_validation_run.py.
"""

from __future__ import annotations

import json

import pytest
import torch

from hpc_ppo.config import load_config
from hpc_ppo.data import Prompt
from hpc_ppo.errors import ConfigError
from hpc_ppo.reward import Rewards, exact_match
from hpc_ppo.rollout.base import Sample, SamplingSpec
from hpc_ppo.rollout.hf_engine import HFEngine
from hpc_ppo.tracking import Tracker
from hpc_ppo.validation import (
    Schedule,
    Validation,
    pass_at_k,
    pass_ks,
    shard_indices,
    validation_metrics,
)


def test_schedule_before_training_every_n_and_after_the_last_step():
    s = Schedule(every=5, before_train=True, total_steps=12)
    assert [k for k in range(13) if s.due(k)] == [0, 5, 10, 12]
    assert not Schedule(every=5, before_train=False, total_steps=10).due(0)
    assert [k for k in range(11) if Schedule(0, True, 10).due(k)] == [0]


def test_shards_are_equal_and_padded():
    assert [shard_indices(5, r, 2) for r in (0, 1)] == [[0, 1, 2], [3, 4, -1]]
    assert [shard_indices(1, r, 3) for r in range(3)] == [[0], [-1], [-1]]


def test_pass_at_k_golden():
    # n=4, c=1: pass@1 = 1/4, pass@2 = 1 - C(3,2)/C(4,2) = 1/2, pass@4 = 1
    assert [pass_at_k(4, 1, k) for k in (1, 2, 4)] == pytest.approx([0.25, 0.5, 1.0])
    assert pass_at_k(4, 0, 4) == 0.0 and pass_at_k(5, 2, 2) == pytest.approx(1 - 3 / 10)
    assert pass_ks(4) == [1, 2, 4] and pass_ks(6) == [1, 2, 4, 6] and pass_ks(1) == [1]


def test_metrics_per_source_and_pass_at_k():
    rewards = [[1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0], [1.0, 1.0, 0.5, 0.0]]
    m = validation_metrics(rewards, ["a", "b", "a"], threshold=1.0)
    assert m == pytest.approx(
        {
            "val/reward_mean": 3.5 / 12,
            "val/a/reward_mean": 3.5 / 8,
            "val/b/reward_mean": 0.0,
            "val/pass_at_1": (1 / 4 + 0 + 2 / 4) / 3,
            "val/pass_at_2": (0.5 + 0 + (1 - 1 / 6)) / 3,
            "val/pass_at_4": 2 / 3,
            # per source: a holds prompts 0 and 2, b prompt 1
            "val/a/pass_at_1": (1 / 4 + 2 / 4) / 2,
            "val/a/pass_at_2": (0.5 + (1 - 1 / 6)) / 2,
            "val/a/pass_at_4": 1.0,
            "val/b/pass_at_1": 0.0,
            "val/b/pass_at_2": 0.0,
            "val/b/pass_at_4": 0.0,
        }
    )
    assert "val/pass_at_1" not in validation_metrics([[1.0], [0.0]], ["a", "a"], 1.0)


class FakeEngine:
    """Answers "yes" to every prompt; counts generate calls."""

    def __init__(self) -> None:
        self.calls = 0

    def generate(self, prompts: list[list[int]], sampling: SamplingSpec) -> list[Sample]:
        self.calls += 1
        return [
            Sample(i, p, [1], [0.0], True) for i, p in enumerate(prompts) for _ in range(sampling.n)
        ]

    def push_weights(self, weights) -> None:
        list(weights)

    def sleep(self) -> None: ...
    def wake_weights(self) -> None: ...
    def wake_cache(self) -> None: ...
    def close(self) -> None: ...


def make_validation(tmp_path, n=2, sample_prompts=16) -> Validation:
    prompts = [Prompt(f"q{i}", "yes" if i % 2 == 0 else "no", f"s{i % 2}") for i in range(4)]
    return Validation(
        Schedule(every=5, before_train=True, total_steps=10),
        prompts,
        encode=lambda p: [len(p.text)],
        decode=lambda ids: ["yes" for _ in ids],
        rewards=Rewards(exact_match),
        sampling=SamplingSpec(n, 1.0, 1.0, 4, seed=0),
        chunks=2,
        pass_threshold=1.0,
        sample_prompts=sample_prompts,
        run_dir=tmp_path,
        rank=0,
        world=1,
    )


def rows(run_dir):
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_a_validation_cut_short_logs_nothing_and_runs_again(tmp_path):
    val, engine = make_validation(tmp_path), FakeEngine()
    tracker = Tracker(tmp_path, None, "t", "r")
    try:
        asks = iter([False, True])  # before the start: no; between chunk 0 and 1: stop
        assert val.run(0, engine, lambda: iter(()), lambda: next(asks), tracker) is False
        assert engine.calls == 1 and not (tmp_path / "metrics.jsonl").read_text()
        assert not (tmp_path / "val").exists()
        # the resumed job: due, not logged, so it runs; then it is never run again
        assert val.run(0, engine, lambda: iter(()), lambda: False, tracker) is True
        assert val.run(0, engine, lambda: iter(()), lambda: False, tracker) is True
        assert val.run(3, engine, lambda: iter(()), lambda: False, tracker) is True  # not due
        assert engine.calls == 3
    finally:
        tracker.close()
    (row,) = rows(tmp_path)
    assert row["step"] == 0 and row["val/reward_mean"] == 0.5
    assert row["val/s0/reward_mean"] == 1.0 and row["val/s1/reward_mean"] == 0.0
    assert row["val/pass_at_2"] == 0.5
    samples = [json.loads(x) for x in (tmp_path / "val" / "step_0.jsonl").read_text().splitlines()]
    assert [(s["index"], s["reward"]) for s in samples] == [
        (0, 1.0),
        (0, 1.0),
        (1, 0.0),
        (1, 0.0),
        (2, 1.0),
        (2, 1.0),
        (3, 0.0),
        (3, 0.0),
    ]
    assert samples[0] == {
        "step": 0,
        "index": 0,
        "source": "s0",
        "prompt": "q0",
        "response": "yes",
        "answer": "yes",
        "reward": 1.0,
    }


def test_a_stop_before_the_start_generates_nothing(tmp_path):
    val, engine = make_validation(tmp_path, sample_prompts=1), FakeEngine()
    tracker = Tracker(tmp_path, None, "t", "r")
    try:
        assert val.run(5, engine, lambda: iter(()), lambda: True, tracker) is False
        assert engine.calls == 0
    finally:
        tracker.close()


def test_hf_engine_greedy_at_temperature_zero():
    torch.manual_seed(0)
    from hpc_ppo.config import ModelConfig
    from hpc_ppo.model import load_policy, tiny_tokenizer

    tok = tiny_tokenizer()
    engine = HFEngine(
        load_policy(ModelConfig(), tok, 0), tok.eos_token_id, tok.pad_token_id, torch.device("cpu")
    )
    prompts = [tok("echo: abc")["input_ids"]]
    a = engine.generate(prompts, SamplingSpec(2, 0.0, 1.0, 6, seed=1))
    b = engine.generate(prompts, SamplingSpec(1, 0.0, 1.0, 6, seed=2))
    assert a[0].response_ids == a[1].response_ids == b[0].response_ids


@pytest.mark.parametrize(
    ("overrides", "line"),
    [
        (
            ["trainer.val_every=5"],
            "trainer.val_every=5 needs held-out prompts: set data.val_path=<.jsonl or .parquet>",
        ),
        (
            ["trainer.val_before_train=true"],
            "trainer.val_before_train needs held-out prompts: set data.val_path=<.jsonl or"
            " .parquet>",
        ),
        (
            ["rollout.val_n=4"],
            "rollout.val_n=4 with rollout.val_temperature=0 (greedy) gives 4 identical"
            " responses: set rollout.val_n=1 or a rollout.val_temperature > 0",
        ),
        (
            ["data.val_path=nowhere.jsonl"],
            "data.val_path=nowhere.jsonl: file not found",
        ),
    ],
)
def test_validation_keys_are_checked(overrides, line):
    with pytest.raises(ConfigError) as e:
        load_config(None, overrides)
    assert str(e.value) == line
