"""Which prompts a step trains on: the global index stream, and each rank's slice of it.

    hpc-ppo run configs/tiny-cpu.yaml trainer.batch_size=32 trainer.nprocs=2   # 16 per rank

Every rank computes the same global batch of prompt indices (`PromptSampler`) and takes its
contiguous slice (`shard_for_rank`). The sampler's state is two integers (epoch, position),
saved with each checkpoint so a requeued job continues the same index stream.
"""

from __future__ import annotations

import torch

from hpc_ppo.errors import ConfigError


class PromptSampler:
    """Global batches of prompt indices, reshuffled per epoch, resumable from `state_dict`.

    Epoch e's order is a permutation from a torch.Generator seeded with seed + e, so it is
    reproducible and independent of the global RNG (which vLLM re-seeds). A batch that crosses
    an epoch boundary takes the rest of the epoch, then continues into the next permutation:
    no prompt is dropped, none repeats within an epoch. batch_size > num_prompts wraps epochs.
    """

    def __init__(self, num_prompts: int, batch_size: int, seed: int, shuffle: bool = True):
        if num_prompts < 1:
            raise ValueError(f"num_prompts={num_prompts} must be >= 1")
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size} must be >= 1")
        self.num_prompts = num_prompts
        self.batch_size = batch_size
        self.seed = seed
        self.shuffle = shuffle
        self.epoch = 0
        self.position = 0  # index into the current epoch's permutation
        self._order = self._permutation(0)

    def _permutation(self, epoch: int) -> list[int]:
        if not self.shuffle:
            return list(range(self.num_prompts))
        g = torch.Generator().manual_seed(self.seed + epoch)
        return torch.randperm(self.num_prompts, generator=g).tolist()

    def next_indices(self) -> list[int]:
        """The global batch for the next step; identical on every rank."""
        out: list[int] = []
        while len(out) < self.batch_size:
            take = min(self.batch_size - len(out), self.num_prompts - self.position)
            out.extend(self._order[self.position : self.position + take])
            self.position += take
            if self.position == self.num_prompts:
                self.epoch += 1
                self.position = 0
                self._order = self._permutation(self.epoch)
        return out

    def state_dict(self) -> dict:
        return {
            "epoch": self.epoch,
            "position": self.position,
            "seed": self.seed,
            "shuffle": self.shuffle,
            "num_prompts": self.num_prompts,
            "batch_size": self.batch_size,
        }

    def load_state_dict(self, state: dict) -> None:
        """Continue the saved index stream exactly.

        seed and shuffle are restored (they define the current epoch's order); batch_size stays
        the constructor's, since the position is per prompt, not per batch.
        """
        if state["num_prompts"] != self.num_prompts:
            raise ConfigError(
                f"data.path: the checkpoint's sampler was saved with {state['num_prompts']} "
                f"prompts but the dataset now has {self.num_prompts}; the dataset changed, "
                f"so resume with the original file or start a fresh run"
            )
        if not 0 <= state["position"] < self.num_prompts or state["epoch"] < 0:
            raise ValueError(f"corrupt sampler state: {state}")
        self.seed = state["seed"]
        self.shuffle = state.get("shuffle", True)
        self.epoch = state["epoch"]
        self.position = state["position"]
        self._order = self._permutation(self.epoch)


def shard_for_rank(items: list, rank: int, world_size: int) -> list:
    """This rank's contiguous, equal slice of a global batch."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank={rank} must be in [0, world_size={world_size})")
    if len(items) % world_size:
        raise ValueError(
            f"cannot split {len(items)} items evenly over world_size={world_size}; "
            f"make the global batch a multiple of the number of ranks"
        )
    n = len(items) // world_size
    return items[rank * n : (rank + 1) * n]
