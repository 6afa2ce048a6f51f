"""LR schedules (update.py): golden values, and a resumed scheduler that keeps its horizon.

    python -m pytest tests/test_lr_schedule.py -q

The end-to-end check (a cosine run stopped and resumed logs the same `actor/lr` history as an
uninterrupted one) is in tests/test_validation_run.py.
"""

from __future__ import annotations

import json
import math

import pytest
import torch

from hpc_ppo.config import OptimConfig, load_config
from hpc_ppo.errors import ConfigError
from hpc_ppo.update import LRSchedule, lr_schedule, make_optimizer


def test_warmup_then_cosine_to_min_ratio_golden():
    f = LRSchedule("cosine", warmup=2, total=6, min_ratio=0.1)
    # warmup (s+1)/2; then progress (s-2)/4 on a half cosine from 1 down to 0.1
    expected = [0.5, 1.0, 1.0, 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi / 4)), 0.55]
    assert [f(s) for s in range(5)] == pytest.approx(expected)
    assert f(6) == pytest.approx(0.1) and f(60) == pytest.approx(0.1)  # stays at the end


def test_linear_and_constant():
    lin = LRSchedule("linear", warmup=0, total=4, min_ratio=0.0)
    assert [lin(s) for s in range(5)] == pytest.approx([1.0, 0.75, 0.5, 0.25, 0.0])
    const = LRSchedule("constant", warmup=4, total=10, min_ratio=0.5)
    assert [const(s) for s in (0, 3, 4, 9)] == [0.25, 1.0, 1.0, 1.0]


def test_warmup_ratio_is_a_share_of_total_steps():
    oc = OptimConfig(lr=1e-3, lr_scheduler="cosine", warmup_ratio=0.25)
    assert lr_schedule(oc, 20).warmup == 5
    assert lr_schedule(OptimConfig(warmup_steps=3), 20).warmup == 3


def test_resumed_scheduler_keeps_its_horizon_through_trainer_json():
    """The scheduler's state goes through trainer.json (JSON): a scheduler built for a longer
    run (trainer.total_steps raised on resume) continues the saved schedule exactly."""
    oc = OptimConfig(lr=1.0, lr_scheduler="cosine", warmup_steps=1, min_lr_ratio=0.0)
    model = torch.nn.Linear(2, 2)
    first = make_optimizer("policy", model, oc, total_steps=8)
    lrs = []
    for _ in range(8):
        lrs.append(first.scheduler.get_last_lr()[0])
        first.optimizer.step()
        first.scheduler.step()
    again = make_optimizer("policy", torch.nn.Linear(2, 2), oc, total_steps=8)
    for _ in range(3):
        again.optimizer.step()
        again.scheduler.step()
    saved = json.loads(json.dumps(again.scheduler.state_dict()))
    resumed = make_optimizer("policy", torch.nn.Linear(2, 2), oc, total_steps=100)
    resumed.scheduler.load_state_dict(saved)
    tail = []
    for _ in range(5):
        tail.append(resumed.scheduler.get_last_lr()[0])
        resumed.optimizer.step()
        resumed.scheduler.step()
    assert tail == pytest.approx(lrs[3:])


def test_warmup_given_twice_is_one_error():
    with pytest.raises(ConfigError) as e:
        load_config(None, ["actor.warmup_steps=5", "actor.warmup_ratio=0.1"], check_paths=False)
    assert str(e.value) == (
        "actor.warmup_steps=5 and actor.warmup_ratio=0.1: give the warmup one way; set the other"
        " to 0"
    )


def test_unknown_scheduler_names_the_choices():
    with pytest.raises(
        ConfigError,
        match=r"critic.lr_scheduler='cosin': must be one of "
        r"constant, cosine, linear \(did you mean cosine\?\)",
    ):
        load_config(None, ["critic.lr_scheduler=cosin"], check_paths=False)
