"""Padding-free micro-batches: a padded micro-batch's real tokens as one packed sequence.

    hpc-ppo run configs/tiny-cpu.yaml trainer.padding_free=true     # the default on a GPU

Rows are concatenated (prompt then response, no pad token) into a single [1, T] sequence whose
position ids restart at 0 for every row. transformers reads that layout as packed sequences
when no attention mask is given: flash-attn's varlen kernel under flash_attention_2, torch's
varlen kernel or sdpa row by row under attention.py's implementation, a block-diagonal causal
mask under plain sdpa; no row attends to another. Only the positions that predict a response token go through the LM head
(`logits_to_keep` as an index tensor), and results come back in the padded [rows, R] layout
every loss function uses.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor


@dataclass(frozen=True)
class Packed:
    """One micro-batch as a packed sequence, and where its response tokens are in it."""

    input_ids: Tensor  # [1, T]: every kept row's prompt and response tokens, back to back
    position_ids: Tensor  # [1, T]: 0 .. len-1 within each row
    targets: Tensor  # [N]: the position whose logits predict each response token, row-major
    labels: Tensor  # [N]: those response tokens
    mask: Tensor  # [rows, R] bool: where the N values go in the padded layout
    no_response: bool  # no row has a response token: one dummy target keeps the graph whole
    cu_seq_lens: Tensor  # [kept rows + 1] int32: where each row starts in T, then T
    max_len: int  # the longest kept row

    def model_inputs(self) -> dict[str, Any]:
        """The model's keyword arguments: the tokens, their positions, and the rows' bounds
        for varlen attention kernels (flash-attn, attention.py), which then need no mask and
        no device sync to find them; sdpa ignores the bounds and reads the positions."""
        return {
            "input_ids": self.input_ids,
            "position_ids": self.position_ids,
            "cu_seq_lens_q": self.cu_seq_lens,
            "cu_seq_lens_k": self.cu_seq_lens,
            "max_length_q": self.max_len,
            "max_length_k": self.max_len,
            "use_cache": False,
        }

    @property
    def tokens(self) -> int:
        return int(self.input_ids.shape[1])

    def unpack(self, flat: Tensor) -> Tensor:
        """[N] values -> [rows, R] (zeros where there is no response token), differentiably."""
        out = flat.new_zeros(self.mask.shape)
        if self.no_response:  # still connected to the forward pass, so backward reaches every
            return out + 0.0 * flat.sum()  # FSDP unit (each rank runs the same collectives)
        return out.masked_scatter(self.mask, flat)


def pack(
    input_ids: Tensor, attention_mask: Tensor, prompt_width: int, response_mask: Tensor
) -> Packed:
    """Pack a padded micro-batch (left-padded prompts of width `prompt_width`, right-padded
    responses) into one sequence. Rows without a response token are left out: they carry no
    loss. If no row has one, row 0's prompt is kept so the forward pass still runs."""
    attn = attention_mask.bool()
    resp = response_mask.bool()
    prompt_len = attn[:, :prompt_width].sum(-1)
    resp_len = resp.sum(-1)
    no_response = not bool(resp_len.any())
    keep = resp_len > 0
    if no_response:
        keep = torch.zeros_like(keep)
        keep[0] = True
    tokens = attn & keep[:, None]
    seq_len = tokens.sum(-1)
    start = seq_len.cumsum(0) - seq_len
    # the logits at row i's position p_i - 1 + j predict its response token j
    cols = torch.arange(resp.shape[1], device=attn.device)
    where = start[:, None] + prompt_len[:, None] - 1 + cols[None, :]
    if no_response:
        targets = where[0, :1]  # row 0's last prompt position; any label will do
        labels = input_ids[0, prompt_width - 1 : prompt_width]
    else:
        targets, labels = where[resp], input_ids[:, prompt_width:][resp]
    row_pos = attention_mask.long().cumsum(-1) - 1
    kept = seq_len[keep]
    cu = torch.zeros(len(kept) + 1, dtype=torch.int32, device=attn.device)
    cu[1:] = kept.cumsum(0)
    return Packed(
        input_ids=input_ids[tokens].unsqueeze(0),
        position_ids=row_pos[tokens].unsqueeze(0),
        targets=targets,
        labels=labels,
        mask=resp,
        no_response=no_response,
        cu_seq_lens=cu,
        max_len=int(kept.max()),
    )
