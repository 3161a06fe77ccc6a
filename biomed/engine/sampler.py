"""The order in which the engine reads training items: a function of (seed, epoch) only.

That is what makes resume exact: a resumed run rebuilds the same permutation and skips the
items its checkpoint says were already read, without reading them.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import Sampler


class EpochSampler(Sampler[int]):
    """A permutation that depends only on (seed, epoch), sharded across processes.

    ``start`` skips the first samples of this process's shard, which is how a resumed run
    continues mid-epoch without reading the skipped batches.
    """

    def __init__(self, n: int, *, seed: int, shuffle: bool = True, rank: int = 0,
                 world_size: int = 1):
        self.n, self.seed, self.shuffle = n, seed, shuffle
        self.rank, self.world_size = rank, world_size
        self.epoch, self.start = 0, 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.epoch, self.start = epoch, start

    def _shard(self) -> list[int]:
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
            order = torch.randperm(self.n, generator=g).tolist()
        else:
            order = list(range(self.n))
        per_rank = self.n // self.world_size  # drop the tail so every rank sees as many batches
        return order[self.rank * per_rank:(self.rank + 1) * per_rank]

    def __iter__(self) -> Iterator[int]:
        return iter(self._shard()[self.start:])

    def __len__(self) -> int:
        return max(0, self.n // self.world_size - self.start)
