"""rollout/hf_engine.py: the transformers engine keeps the RolloutEngine contract (what the
trainer and the vLLM engine rely on) on the tiny CPU model.

Run: python -m pytest tests/rollout/test_hf_engine.py -q
"""

from __future__ import annotations

import pytest
import torch
from helpers import TINY

from hpc_ppo.config import load_config
from hpc_ppo.model import load_policy, tiny_tokenizer
from hpc_ppo.rollout.base import RolloutEngine, SamplingSpec
from hpc_ppo.rollout.hf_engine import HFEngine

SPEC = SamplingSpec(n=3, temperature=1.0, top_p=1.0, max_new_tokens=6, seed=7)


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


def policy(seed: int = 0) -> torch.nn.Module:
    return load_policy(load_config(TINY).model, tiny_tokenizer(), seed)


def engine(tok, seed: int = 0, batch_size: int = 256) -> HFEngine:
    return HFEngine(
        policy(seed), tok.eos_token_id, tok.pad_token_id, torch.device("cpu"), batch_size
    )


@pytest.fixture(scope="module")
def prompts(tok) -> list[list[int]]:
    return [tok(text).input_ids for text in ("echo: abc", "echo: xy", "echo: hello")]


def test_conforms_to_the_rollout_engine_protocol(tok):
    assert isinstance(engine(tok), RolloutEngine)


def test_generate_groups_n_samples_per_prompt_with_a_logprob_per_token(tok, prompts):
    samples = engine(tok).generate(prompts, SPEC)
    assert [s.prompt_index for s in samples] == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    for s in samples:
        assert s.prompt_ids == prompts[s.prompt_index]
        assert 1 <= len(s.response_ids) <= SPEC.max_new_tokens
        assert len(s.logprobs) == len(s.response_ids)
        assert all(lp <= 0.0 for lp in s.logprobs)
        # EOS ends a finished response and appears nowhere else.
        assert s.finished == (s.response_ids[-1] == tok.eos_token_id)
        assert tok.eos_token_id not in s.response_ids[:-1]


def test_same_seed_same_samples_whatever_the_batch_and_global_rng(tok, prompts):
    first = engine(tok).generate(prompts, SPEC)
    torch.manual_seed(12345)  # the engine's stream is its own
    again = engine(tok).generate(prompts, SPEC)
    assert first == again
    other = engine(tok).generate(prompts, SamplingSpec(**{**SPEC.__dict__, "seed": 8}))
    assert [s.response_ids for s in other] != [s.response_ids for s in first]


def test_push_weights_replaces_every_parameter(tok, prompts):
    eng, trained = engine(tok, seed=0), policy(seed=1)
    before = eng.generate(prompts, SPEC)
    eng.push_weights(trained.named_parameters())
    for name, p in eng.model.named_parameters():
        assert torch.equal(p, dict(trained.named_parameters())[name]), name
    # Now it samples as an engine built on the pushed weights does.
    assert eng.generate(prompts, SPEC) == engine(tok, seed=1).generate(prompts, SPEC)
    assert eng.generate(prompts, SPEC) != before


def test_push_of_an_unknown_name_fails_naming_it(tok):
    eng = engine(tok)
    weights = [*policy().named_parameters(), ("model.layers.9.mlp.up_proj.weight", torch.zeros(1))]
    with pytest.raises(
        KeyError, match=r"model\.layers\.9\.mlp\.up_proj\.weight is not a parameter"
    ):
        eng.push_weights(weights)


def test_push_missing_tensors_fails_naming_them(tok):
    eng = engine(tok)
    weights = list(policy().named_parameters())
    dropped = sorted(name for name, _ in weights[-2:])
    with pytest.raises(KeyError) as err:
        eng.push_weights(weights[:-2])
    text = str(err.value)
    assert f"no tensor for {dropped}" in text and "(2 missing)" in text, text


def test_sleep_and_wake_are_no_ops_on_cpu(tok, prompts):
    eng = engine(tok)
    want = eng.generate(prompts, SPEC)
    eng.sleep()
    eng.wake_weights()
    eng.wake_cache()
    assert eng.generate(prompts, SPEC) == want
    eng.close()


def test_forced_lengths_give_each_prompt_a_seeded_length_and_keep_the_logprobs(tok, prompts):
    """rollout.forced_lengths (benchmarks): every sample of a prompt gets the prompt's drawn
    length, EOS included as an ordinary token; the same seed gives the same samples."""
    spec = SamplingSpec(**{**SPEC.__dict__, "max_new_tokens": 40, "forced_lengths": (3, 40)})
    many = [prompts[i % 3] for i in range(12)]
    samples = engine(tok, batch_size=5).generate(many, spec)  # chunks of unequal lengths
    want = [spec.forced_length(i) for i in range(12)]
    assert [len(s.response_ids) for s in samples] == [w for w in want for _ in range(3)]
    assert len(set(want)) > 3 and all(3 <= w <= 40 for w in want)
    assert all(len(s.logprobs) == len(s.response_ids) and not s.finished for s in samples)
    again = engine(tok, batch_size=5).generate(many, spec)
    assert [s.response_ids for s in again] == [s.response_ids for s in samples]
    other = SamplingSpec(**{**spec.__dict__, "seed": 8})
    assert [other.forced_length(i) for i in range(12)] != want


def test_samples_come_from_the_policy_whatever_the_folders_generation_config(tok, tmp_path):
    """A model folder's generation_config.json (a repetition penalty, top-k) must not shape the
    samples: their logprobs are the policy's own, as the trainer scores them."""
    from transformers import GenerationConfig

    folder = tmp_path / "model"
    model = policy()
    model.generation_config = GenerationConfig(repetition_penalty=3.0, top_k=3, do_sample=True)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    loaded = load_policy(load_config(TINY, [f"model.path={folder}"]).model, tok, 0)
    assert loaded.generation_config.repetition_penalty == 3.0  # what generate() would merge in
    hf = HFEngine(loaded, tok.eos_token_id, tok.pad_token_id, torch.device("cpu"))
    prompts = [tok("echo: abcabc").input_ids]
    for s in hf.generate(prompts, SPEC):
        ids = torch.tensor([s.prompt_ids + s.response_ids])
        with torch.no_grad():
            logits = hf.model(ids).logits[0, len(s.prompt_ids) - 1 : -1].float()
        own = torch.log_softmax(logits, -1).gather(-1, ids[0, len(s.prompt_ids) :, None])
        assert torch.allclose(torch.tensor(s.logprobs), own.squeeze(-1), atol=1e-5)
