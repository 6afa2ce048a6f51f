"""Samples -> padded tensors, and the forward passes that score them.

Layout (as in verl): prompts left-padded to a common width P, responses right-padded to R, so
the response logits of every row are the slice [P-1, P-1+R) of one forward pass. Position ids
skip the left padding so a row's numbers do not depend on its neighbours.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
from torch import nn

from hpc_ppo.algo.losses import entropy_from_logits, logprobs_from_logits
from hpc_ppo.rollout.base import Sample


@dataclass
class RolloutBatch:
    """Per-row tensors with a shared leading dimension; `prompt_width` is P."""

    prompt_width: int
    t: dict[str, torch.Tensor] = field(default_factory=dict)

    def __len__(self) -> int:
        return self.t["input_ids"].shape[0]

    def __getitem__(self, key: str) -> torch.Tensor:
        return self.t[key]

    def __setitem__(self, key: str, value: torch.Tensor) -> None:
        self.t[key] = value

    def select(self, rows: torch.Tensor) -> RolloutBatch:
        return RolloutBatch(self.prompt_width, {k: v[rows] for k, v in self.t.items()})

    def to(self, device: torch.device) -> RolloutBatch:
        return RolloutBatch(self.prompt_width, {k: v.to(device) for k, v in self.t.items()})

    def chunks(self, size: int) -> Iterator[RolloutBatch]:
        for start in range(0, len(self), size):
            yield self.select(torch.arange(start, min(start + size, len(self))))


def collate(samples: list[Sample], scores: list[float], pad_id: int) -> RolloutBatch:
    width = max(len(s.prompt_ids) for s in samples)
    resp = max(1, max(len(s.response_ids) for s in samples))
    n = len(samples)
    input_ids = torch.full((n, width + resp), pad_id, dtype=torch.long)
    attn = torch.zeros((n, width + resp), dtype=torch.long)
    engine_lp = torch.zeros((n, resp), dtype=torch.float32)
    for row, s in enumerate(samples):
        p, r = len(s.prompt_ids), len(s.response_ids)
        input_ids[row, width - p : width] = torch.tensor(s.prompt_ids)
        input_ids[row, width : width + r] = torch.tensor(s.response_ids, dtype=torch.long)
        attn[row, width - p : width + r] = 1
        engine_lp[row, :r] = torch.tensor(s.logprobs)
    position_ids = (attn.cumsum(-1) - 1).clamp(min=0)
    return RolloutBatch(
        width,
        {
            "input_ids": input_ids,
            "attention_mask": attn,
            "position_ids": position_ids,
            "responses": input_ids[:, width:],
            "response_mask": attn[:, width:].float(),
            "scores": torch.tensor(scores, dtype=torch.float32),
            "engine_logprobs": engine_lp,
        },
    )


def _response_slice(x: torch.Tensor, batch: RolloutBatch) -> torch.Tensor:
    p, r = batch.prompt_width, batch["responses"].shape[1]
    return x[:, p - 1 : p - 1 + r]


def policy_forward(
    model: nn.Module,
    batch: RolloutBatch,
    temperature: float,
    with_entropy: bool = False,
    entropy_grad: bool = True,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Log-probs of the response tokens (temperature applied, as the engine sampled them).

    Only the last R+1 positions go through the LM head (`logits_to_keep`): with a 150k-token
    vocabulary the prompt positions' logits are most of the head's work and all of its
    memory. `entropy_grad=False` computes the entropy for logging only (no backward graph).
    """
    width = batch["responses"].shape[1]
    out = model(
        input_ids=batch["input_ids"],
        attention_mask=batch["attention_mask"],
        position_ids=batch["position_ids"],
        use_cache=False,
        logits_to_keep=width + 1,
    )
    logits = out.logits[:, :width].float() / temperature
    logprobs = logprobs_from_logits(logits, batch["responses"])
    entropy = None
    if with_entropy:
        if entropy_grad:
            entropy = entropy_from_logits(logits)
        else:
            with torch.no_grad():
                entropy = entropy_from_logits(logits.detach())
    return logprobs, entropy


def critic_forward(model: nn.Module, batch: RolloutBatch) -> torch.Tensor:
    """V(s_t) for the state before each response token."""
    out = model(
        input_ids=batch["input_ids"],
        attention_mask=batch["attention_mask"],
        position_ids=batch["position_ids"],
        use_cache=False,
    )
    return _response_slice(out.logits[..., 0], batch).float()


@torch.no_grad()
def forward_in_chunks(fn, model: nn.Module, batch: RolloutBatch, size: int, **kw) -> torch.Tensor:
    """Evaluate `fn` over micro-batches without grad and concatenate the first output."""
    outs = []
    for chunk in batch.chunks(size):
        res = fn(model, chunk, **kw)
        outs.append(res[0] if isinstance(res, tuple) else res)
    return torch.cat(outs)
