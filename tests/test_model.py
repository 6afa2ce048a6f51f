"""Models built for a checkpoint restore (model.for_restore): a requeued job reads no weight
file, and once the restore has set the weights the model is the one from_pretrained loads.

Run: python -m pytest tests/test_model.py -q
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers import TINY, qwen2_config
from transformers import AutoModelForCausalLM

from hpc_ppo.config import load_config
from hpc_ppo.model import load_critic, load_policy, tiny_tokenizer

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    """A Hugging Face folder with tied embeddings (as Qwen2.5-0.5B) and random weights."""
    folder = tmp_path_factory.mktemp("model")
    tok = tiny_tokenizer()
    conf = qwen2_config(len(tok), tie_word_embeddings=True, pad_token_id=tok.pad_token_id)
    with torch.random.fork_rng():
        torch.manual_seed(3)
        AutoModelForCausalLM.from_config(conf).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def assert_same_model(loaded: torch.nn.Module, restored: torch.nn.Module) -> None:
    """`restored`, after a restore of `loaded`'s state, equals it: every buffer (the
    non-persistent ones come from init_weights, not from the state), mode, ties, logits."""
    restored.load_state_dict(loaded.state_dict())
    want, got = dict(loaded.named_buffers()), dict(restored.named_buffers())
    assert want.keys() == got.keys() and want, sorted(got)
    assert [k for k in want if not torch.equal(want[k], got[k])] == []
    assert restored.training == loaded.training
    out, emb = loaded.get_output_embeddings(), loaded.get_input_embeddings()
    if out is not None and out.weight is emb.weight:  # tied: one parameter again
        assert restored.get_output_embeddings().weight is restored.get_input_embeddings().weight
    ids = torch.randint(0, 40, (2, 9), generator=torch.Generator().manual_seed(0))
    assert torch.equal(loaded(ids).logits, restored(ids).logits)


def test_a_folder_model_for_restore_reads_no_weights_and_matches_from_pretrained(
    model_dir: Path, tmp_path: Path
) -> None:
    mc = load_config(TINY, [f"model.path={model_dir}"]).model
    tok = tiny_tokenizer()
    policy, critic = load_policy(mc, tok, 0), load_critic(mc, tok, 0)
    # The weights file gone: a build that read it would fail.
    weights = model_dir / "model.safetensors"
    moved = weights.rename(tmp_path / "model.safetensors")
    try:
        assert_same_model(policy, load_policy(mc, tok, 0, restore_on=CPU))
        assert_same_model(critic, load_critic(mc, tok, 0, restore_on=CPU))
    finally:
        moved.rename(weights)


def test_the_builtin_model_for_restore_matches_the_seeded_one_and_keeps_the_rng() -> None:
    mc = load_config(TINY).model
    tok = tiny_tokenizer()
    torch.manual_seed(7)
    restored = load_policy(mc, tok, 0, restore_on=CPU)
    critic = load_critic(mc, tok, 0, restore_on=CPU)
    drawn = torch.rand(4)
    torch.manual_seed(7)
    assert torch.equal(torch.rand(4), drawn)  # init_weights drew from a forked stream
    assert_same_model(load_policy(mc, tok, 0), restored)
    assert_same_model(load_critic(mc, tok, 0), critic)
