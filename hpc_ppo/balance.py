"""Sequence-length balancing across ranks: whole prompt groups move so every rank trains on a
similar number of tokens (the slowest rank sets the pace of every FSDP collective).

Groups (the `rollout.n` samples of one prompt) stay whole, so GRPO's group statistics are
unchanged, and every rank keeps the same number of groups, so mini-batch counts still agree.
"""

from __future__ import annotations

import torch.distributed as dist

from hpc_ppo.rollout.base import Sample


def assign_groups(costs: list[int], world: int) -> list[list[int]]:
    """Group indices per rank: longest first, each to the least-loaded rank with room left.

    Every rank gets len(costs) // world groups; ties go to the lower rank (deterministic).
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
    """This rank's share of all ranks' (sample, score) groups after balancing by token count."""
    gathered: list = [None] * world
    dist.all_gather_object(gathered, (samples, scores))
    all_samples = [s for part, _ in gathered for s in part]
    all_scores = [x for _, part in gathered for x in part]
    n_groups = len(all_samples) // group
    costs = [
        sum(
            len(s.prompt_ids) + len(s.response_ids)
            for s in all_samples[g * group : (g + 1) * group]
        )
        for g in range(n_groups)
    ]
    mine = assign_groups(costs, world)[rank]
    rows = [g * group + j for g in mine for j in range(group)]
    return [all_samples[i] for i in rows], [all_scores[i] for i in rows]
