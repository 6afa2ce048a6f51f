"""hpc_ppo.algo.logits: log-probs and entropies against torch.distributions, in float32 for
bf16 input, stable for huge logits, and a hand-written backward equal to autograd through the
plain formulas (gradcheck in float64), chunked or not."""

from __future__ import annotations

import math

import pytest
import torch
from torch.distributions import Categorical

from hpc_ppo.algo.logits import logprobs_and_entropy


def _data(shape: tuple[int, ...], vocab: int, seed: int, scale: float = 3.0):
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(*shape, vocab, generator=gen) * scale
    return logits, torch.randint(0, vocab, shape, generator=gen)


@pytest.mark.parametrize("temperature", [1.0, 0.6])
def test_matches_categorical(temperature):
    logits, labels = _data((2, 5), 11, seed=0)
    lp, ent = logprobs_and_entropy(logits, labels, temperature)
    want = Categorical(logits=logits / temperature)
    torch.testing.assert_close(lp, want.log_prob(labels))
    torch.testing.assert_close(ent, want.entropy())
    _, uniform = logprobs_and_entropy(torch.zeros(4, 8), torch.zeros(4, dtype=torch.long))
    torch.testing.assert_close(uniform, torch.full((4,), math.log(8)))


def test_bf16_input_is_computed_in_float32():
    # Moderate logits, so a bf16 logsumexp (3 significant digits) would miss the tolerance.
    logits, labels = _data((3, 4), 7, seed=1)
    lp, ent = logprobs_and_entropy(logits.bfloat16(), labels)
    assert lp.dtype == ent.dtype == torch.float32
    want = Categorical(logits=logits.bfloat16().float())
    torch.testing.assert_close(lp, want.log_prob(labels))
    torch.testing.assert_close(ent, want.entropy())


def test_stable_for_huge_logits():
    # exp(1000) overflows; the answer depends on differences only: log p(2) = -log(1 + e^-1 +
    # e^-2); logits (1e4, 1e4 + 1) have H = log(1 + e) - e / (1 + e). atol: float32 spacing.
    lp, _ = logprobs_and_entropy(torch.tensor([[1000.0, 1001.0, 1002.0]]), torch.tensor([2]))
    torch.testing.assert_close(lp, torch.tensor([-0.4076059]), atol=1e-4, rtol=0)
    e = math.e
    _, ent = logprobs_and_entropy(torch.tensor([[1e4, 1e4 + 1.0]]), torch.tensor([0]))
    torch.testing.assert_close(ent, torch.tensor([math.log(1 + e) - e / (1 + e)]))


def test_rejects_mismatched_labels():
    with pytest.raises(ValueError, match="does not match logits shape"):
        logprobs_and_entropy(torch.zeros(2, 3, 5), torch.zeros(2, 4, dtype=torch.long))


@pytest.mark.parametrize("chunk_rows", [None, 1, 3])
def test_gradcheck_in_float64(chunk_rows):
    logits, labels = _data((7,), 6, seed=2)
    logits = logits.double().requires_grad_()
    for which in (0, 1):  # each output alone: the other's gradient arrives as None

        def f(z: torch.Tensor, which: int = which) -> torch.Tensor:
            return logprobs_and_entropy(z, labels, 0.7, chunk_rows)[which]

        assert torch.autograd.gradcheck(f, (logits,))
    assert torch.autograd.gradcheck(
        lambda z: logprobs_and_entropy(z, labels, 1.3, chunk_rows), (logits,)
    )


def test_chunked_bf16_gradients_equal_autograd_through_the_plain_formulas():
    logits, labels = _data((4, 9), 50, seed=3)
    weights = torch.randn(2, 4, 9, generator=torch.Generator().manual_seed(4))
    grads = []
    for chunk_rows in (None, 5):
        z = logits.bfloat16().requires_grad_()
        lp, ent = logprobs_and_entropy(z, labels, 0.8, chunk_rows)
        ((lp * weights[0]).sum() + (ent * weights[1]).sum()).backward()
        grads.append(z.grad)
    plain = logits.bfloat16().requires_grad_()
    logp = torch.log_softmax(plain.float() / 0.8, dim=-1)
    lp = logp.gather(-1, labels[..., None]).squeeze(-1)
    ent = -(logp.exp() * logp).sum(-1)
    ((lp * weights[0]).sum() + (ent * weights[1]).sum()).backward()
    assert grads[0].dtype == torch.bfloat16
    assert torch.equal(grads[0], grads[1])  # chunking changes nothing
    torch.testing.assert_close(grads[0].float(), plain.grad.float(), atol=1e-2, rtol=1e-2)


def test_no_gradient_when_neither_output_is_used():
    z = torch.randn(3, 5, requires_grad=True)
    lp, ent = logprobs_and_entropy(z, torch.tensor([0, 1, 2]))
    (lp.detach().sum() + 0 * z.sum()).backward()
    assert not z.grad.any()


def test_without_entropy_the_log_probs_and_their_gradient_are_the_same():
    """entropy=False (old and reference log-probs): None for the entropy, nothing else moves."""
    logits, labels = _data((3, 4), 20, seed=5)
    out = []
    for entropy in (True, False):
        z = logits.clone().requires_grad_()
        lp, ent = logprobs_and_entropy(z, labels, 0.9, 5, entropy=entropy)
        assert (ent is None) == (not entropy)
        (lp * torch.arange(12.0).view(3, 4)).sum().backward()
        out.append((lp.detach(), z.grad))
    assert torch.equal(out[0][0], out[1][0]) and torch.equal(out[0][1], out[1][1])
