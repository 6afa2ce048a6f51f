"""verl and TRL names get the hpc-ppo key in their "did you mean" (config/foreign.py).

Run: python -m pytest tests/config/test_foreign.py -q
"""

from __future__ import annotations

import pytest

from hpc_ppo.config import Config
from hpc_ppo.config.foreign import ADVICE, KEYS
from hpc_ppo.config.reference import reference


@pytest.mark.parametrize(
    ("override", "line"),
    [
        # spelled like data.max_prompt_tokens, which difflib offered: the wrong end
        (
            "data.max_response_length=512",
            "data.max_response_length: unknown key; did you mean rollout.max_new_tokens=512?"
            " (verl's data.max_response_length)",
        ),
        (
            "trainer.test_freq=5",
            "trainer.test_freq: unknown key; did you mean trainer.val_every=5?"
            " (verl's trainer.test_freq)",
        ),
        (
            "trainer.total_epochs=3",
            "trainer.total_epochs: unknown key; hpc-ppo counts steps: set trainer.total_steps to"
            " epochs x prompts / trainer.batch_size (verl's trainer.total_epochs)",
        ),
        (
            "learning_rate=1e-6",
            "learning_rate: unknown key; did you mean actor.lr=1e-6? (TRL's learning_rate)",
        ),
        (
            "trainer.num_generations=8",
            "trainer.num_generations: unknown key; did you mean rollout.n=8?"
            " (TRL's num_generations)",
        ),
        ("actor.lrr=1", "actor.lrr: unknown key; did you mean actor.lr?"),  # spelling still
    ],
)
def test_foreign_names_suggest_the_hpc_ppo_key(tiny, errors_of, override, line):
    assert errors_of(tiny, [override]) == [line]


def test_a_verl_section_lists_each_leaf_with_its_key(tmp_path, errors_of):
    path = tmp_path / "verl.yaml"
    path.write_text(
        "actor_rollout_ref:\n  actor: {optim: {lr: 1.0e-6}}\n  rollout: {n: 8, name: vllm}\n"
    )
    assert errors_of(path, []) == [
        "actor_rollout_ref: unknown key; actor_rollout_ref.actor.optim.lr: did you mean"
        " actor.lr=1e-06? (verl's actor_rollout_ref.actor.optim.lr);"
        " actor_rollout_ref.rollout.n: did you mean rollout.n=8?"
        " (verl's actor_rollout_ref.rollout.n)"
    ]


def test_every_suggested_key_exists():
    keys = {key for key, _, _ in reference(Config())}
    assert sorted(set(KEYS.values()) - keys) == []
    assert not set(KEYS) & set(ADVICE)
