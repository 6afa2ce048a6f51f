"""One step's samples as tensors: samples -> padded tensors -> micro-batch plan -> forward.

    hpc-ppo run configs/tiny-cpu.yaml trainer.max_tokens_per_micro_batch=256   # every step

Layout (as in verl): prompts left-padded to a common width P, responses right-padded to R, so
the response logits of every row are the slice [P-1, P-1+R) of one forward pass. Position ids
skip the left padding so a row's numbers do not depend on its neighbours.

Micro-batches: every rank must run the same number of forward/backward passes (FSDP2
all-gathers inside each), so the ranks agree on the largest count any of them needs and each
splits its rows into exactly that many. With a token budget, rows are sorted by length and cut
into contiguous groups with the smallest possible largest size: real tokens when micro-batches
are padding-free (`trainer.padding_free`, packed sequences: packing.py), else the padded size
(rows x widest row). Each is trimmed to its own widths before the forward.

Balancing (`trainer.balance_tokens`): whole prompt groups move between ranks so every rank
trains on a similar number of tokens (the slowest rank sets the pace of every collective).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from torch import nn

from hpc_ppo import dist as hdist
from hpc_ppo.algo.logits import logprobs_and_entropy
from hpc_ppo.packing import Packed, pack
from hpc_ppo.rollout.base import Sample

FULL_WIDTH_KEYS = ("input_ids", "attention_mask", "position_ids")


@dataclass
class RolloutBatch:
    """Per-row tensors with a shared leading dimension; `prompt_width` is P. A padding-free
    micro-batch also holds its rows' real tokens as one packed sequence (`packed`)."""

    prompt_width: int
    t: dict[str, torch.Tensor] = field(default_factory=dict)
    packed: Packed | None = None

    def __len__(self) -> int:
        return self.t["input_ids"].shape[0]

    def __getitem__(self, key: str) -> torch.Tensor:
        return self.t[key]

    def __setitem__(self, key: str, value: torch.Tensor) -> None:
        self.t[key] = value

    def __contains__(self, key: str) -> bool:
        return key in self.t

    def select(self, rows: torch.Tensor) -> RolloutBatch:
        return RolloutBatch(self.prompt_width, {k: v[rows] for k, v in self.t.items()})

    def to(self, device: torch.device) -> RolloutBatch:
        return RolloutBatch(self.prompt_width, {k: v.to(device) for k, v in self.t.items()})


@dataclass(frozen=True)
class MicroBatching:
    """How a batch is cut for forward/backward passes (`trainer.micro_batch_size`,
    `trainer.max_tokens_per_micro_batch`, `trainer.padding_free`)."""

    max_rows: int
    max_tokens: int | None = None
    padding_free: bool = False


@dataclass(frozen=True)
class MicroPlan:
    """Row indices of each micro-batch, and whether they run as packed sequences."""

    rows: list[torch.Tensor]
    packed: bool = False

    def __iter__(self):
        return iter(self.rows)

    def __len__(self) -> int:
        return len(self.rows)


# ---------------------------------------------------------------- samples -> padded tensors


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


# ---------------------------------------------------------------- balancing across ranks


def assign_groups(costs: list[int], world: int) -> list[list[int]]:
    """Group indices per rank: longest first, each to the least-loaded rank with room left.

    Every rank gets len(costs) // world groups, so mini-batch counts still agree; ties go to
    the lower rank (deterministic).
    """
    per_rank = len(costs) // world
    loads, owned = [0] * world, [[] for _ in range(world)]
    for g in sorted(range(len(costs)), key=lambda i: (-costs[i], i)):
        rank = min(
            (r for r in range(world) if len(owned[r]) < per_rank), key=lambda r: (loads[r], r)
        )
        owned[rank].append(g)
        loads[rank] += costs[g]
    return [sorted(o) for o in owned]


def balance_groups(
    samples: list[Sample], scores: list[float], group: int, rank: int, world: int
) -> tuple[list[Sample], list[float]]:
    """This rank's share of all ranks' (sample, score) groups after balancing by token count.

    Groups (the `rollout.n` samples of one prompt) stay whole: GRPO's statistics are unchanged.
    """
    gathered: list = [None] * world
    dist.all_gather_object(gathered, (samples, scores))
    all_samples = [s for rank_samples, _ in gathered for s in rank_samples]
    all_scores = [x for _, rank_scores in gathered for x in rank_scores]
    costs = [
        sum(len(s.prompt_ids) + len(s.response_ids) for s in all_samples[g : g + group])
        for g in range(0, len(all_samples), group)
    ]
    rows = [g * group + j for g in assign_groups(costs, world)[rank] for j in range(group)]
    return [all_samples[i] for i in rows], [all_scores[i] for i in rows]


# ---------------------------------------------------------------- micro-batch plan


def row_lengths(batch: RolloutBatch) -> tuple[torch.Tensor, torch.Tensor]:
    """(prompt tokens, response tokens) per row, on the CPU."""
    attn = batch["attention_mask"].cpu()
    prompt = attn[:, : batch.prompt_width].sum(-1)
    return prompt, batch["response_mask"].cpu().sum(-1).long()


def plan_micro_batches(batch: RolloutBatch, spec: MicroBatching) -> MicroPlan:
    """Row indices of each micro-batch; the same number of micro-batches on every rank."""
    n = len(batch)
    if spec.max_tokens is None:
        k = int(hdist.all_reduce([math.ceil(n / spec.max_rows)], "max")[0])
        k = min(k, n)
        edges = [round(i * n / k) for i in range(k + 1)]
        return MicroPlan(
            [torch.arange(edges[i], edges[i + 1]) for i in range(k)], spec.padding_free
        )
    prompt, resp = row_lengths(batch)
    order = sorted(range(n), key=lambda i: (-int(prompt[i] + resp[i]), i))
    p, r = [int(prompt[i]) for i in order], [int(resp[i]) for i in order]
    k = len(_group(p, r, spec.max_tokens, spec.max_rows, spec.padding_free))
    k = min(int(hdist.all_reduce([k], "max")[0]), n)
    groups = split_exactly(p, r, k, spec.max_rows, spec.padding_free)
    return MicroPlan([torch.tensor([order[j] for j in g]) for g in groups], spec.padding_free)


def _cost(p: list[int], r: list[int], lo: int, hi: int, real: bool) -> int:
    """Tokens a forward over rows [lo, hi) computes: real ones packed, else rows x widest."""
    if real:
        return sum(p[lo:hi]) + sum(r[lo:hi])
    return (hi - lo) * (max(p[lo:hi]) + max(r[lo:hi]))


def _group(p: list[int], r: list[int], cap: int, max_rows: int, real: bool) -> list[range]:
    """Greedy contiguous groups under a token cap (a single longer row gets its own)."""
    groups, lo = [], 0
    while lo < len(p):
        hi = lo + 1
        while hi < len(p) and hi - lo < max_rows and _cost(p, r, lo, hi + 1, real) <= cap:
            hi += 1
        groups.append(range(lo, hi))
        lo = hi
    return groups


def split_exactly(
    p: list[int], r: list[int], k: int, max_rows: int, real: bool = False
) -> list[range]:
    """k contiguous groups of rows (prompt lengths p, response lengths r, longest first)
    minimising the largest size in tokens, real or padded (binary search on the cap)."""
    lo, hi = 1, _cost(p, r, 0, len(p), real)
    while lo < hi:
        mid = (lo + hi) // 2
        if len(_group(p, r, mid, max_rows, real)) <= k:
            hi = mid
        else:
            lo = mid + 1
    groups = _group(p, r, lo, max_rows, real)
    while len(groups) < k:  # fewer groups than agreed: halve the largest
        big = max(range(len(groups)), key=lambda i: len(groups[i]))
        g = groups[big]
        if len(g) < 2:
            break
        mid = g.start + len(g) // 2
        groups[big : big + 1] = [range(g.start, mid), range(mid, g.stop)]
    return groups


def trimmed(batch: RolloutBatch) -> RolloutBatch:
    """Drop the columns that are padding for every row of this (sub-)batch."""
    prompt, resp = row_lengths(batch)
    width, keep_r = int(prompt.max()), max(1, int(resp.max()))
    left = batch.prompt_width - width
    out = {}
    for key, t in batch.t.items():
        if key in FULL_WIDTH_KEYS:
            out[key] = t[:, left : batch.prompt_width + keep_r]
        elif t.dim() == 2:
            out[key] = t[:, :keep_r]
        else:
            out[key] = t
    return RolloutBatch(width, out)


def computed_tokens(batch: RolloutBatch, plan: MicroPlan) -> int:
    """Token positions a forward over `plan` runs: real tokens when packed (rows without a
    response are left out), else each micro-batch's rows x widest row."""
    prompt, resp = row_lengths(batch)
    total = 0
    for rows in plan:
        p, r = prompt[rows], resp[rows]
        if plan.packed:
            total += int((p + r)[r > 0].sum()) or int(p[0])
        else:
            total += len(rows) * int(p.max() + max(1, int(r.max())))
    return total


def micro_batches(batch: RolloutBatch, plan: MicroPlan):
    """Each planned micro-batch, trimmed (and packed where the plan says so), with its row
    indices (on the batch's device)."""
    device = batch["input_ids"].device
    for rows in plan:
        rows = rows.to(device)
        micro = trimmed(batch.select(rows))
        if plan.packed:
            micro.packed = pack(
                micro["input_ids"],
                micro["attention_mask"],
                micro.prompt_width,
                micro["response_mask"],
            )
        yield rows, micro


# ---------------------------------------------------------------- forward passes


def policy_forward(
    model: nn.Module,
    batch: RolloutBatch,
    temperature: float,
    with_entropy: bool = False,
    entropy_grad: bool = True,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Log-probs of the response tokens (temperature applied, as the engine sampled them).

    Only the positions that predict a response token go through the LM head
    (`logits_to_keep`): with a 150k-token vocabulary the prompt positions' logits are most of
    the head's work and all of its memory. Packed: exactly the real response tokens; padded:
    the R positions from the last prompt token on. `entropy_grad=False` computes the entropy
    for logging only (no backward graph). Both are [rows, R]; past a row's response they are
    zero when packed and meaningless when padded (callers mask them).
    """
    pk = batch.packed
    if pk is not None:
        out = model(**pk.model_inputs(), logits_to_keep=pk.targets)
        logits, labels = out.logits[0], pk.labels  # [N, V], [N]
    else:
        p, width = batch.prompt_width, batch["responses"].shape[1]
        ids = batch["input_ids"]
        out = model(
            input_ids=ids,
            attention_mask=batch["attention_mask"],
            position_ids=batch["position_ids"],
            use_cache=False,
            # positions P-1 .. P+R-2 exactly: the logits come out contiguous, no copy
            logits_to_keep=torch.arange(p - 1, p - 1 + width, device=ids.device),
        )
        logits, labels = out.logits, batch["responses"]
    # float32 math in chunks, without float32 copies of the logits kept for the backward
    logprobs, entropy = logprobs_and_entropy(logits, labels, temperature, entropy=with_entropy)
    if entropy is not None and not entropy_grad:
        entropy = entropy.detach()
    if pk is not None:
        logprobs = pk.unpack(logprobs)
        entropy = pk.unpack(entropy) if entropy is not None else None
    return logprobs, entropy


def critic_forward(model: nn.Module, batch: RolloutBatch) -> torch.Tensor:
    """V(s_t) for the state before each response token; [rows, R]."""
    pk = batch.packed
    if pk is not None:
        out = model(**pk.model_inputs())
        return pk.unpack(out.logits[0, pk.targets, 0].float())
    out = model(
        input_ids=batch["input_ids"],
        attention_mask=batch["attention_mask"],
        position_ids=batch["position_ids"],
        use_cache=False,
    )
    p, r = batch.prompt_width, batch["responses"].shape[1]
    return out.logits[:, p - 1 : p - 1 + r, 0].float()


@torch.no_grad()
def forward_all(
    fn: Callable[..., torch.Tensor | tuple],
    model: nn.Module,
    batch: RolloutBatch,
    plan: MicroPlan,
    **kw,
) -> torch.Tensor:
    """`fn` (policy_forward / critic_forward) over the planned micro-batches, without grad;
    [rows, response width]."""
    out = torch.zeros(
        batch["responses"].shape, dtype=torch.float32, device=batch["responses"].device
    )
    for rows, micro in micro_batches(batch, plan):
        res = fn(model, micro, **kw)
        res = res[0] if isinstance(res, tuple) else res
        out[rows, : res.shape[1]] = res
    return out
