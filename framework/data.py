"""Resumable, shardable batching: which dataset indices each process reads at each step.

The stream of global positions 0, 1, 2, ... is cut into epochs of ``len(dataset)`` positions; epoch
``e`` visits the dataset in the order ``randperm(n)`` seeded by ``(seed, e)``. Each step consumes
``batch_size * world_size`` consecutive positions and rank ``r`` takes the ``r``-th slice of them. A run
is therefore resumed exactly from the number of positions already consumed, even with a different
number of processes, and no loader state needs saving.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler


class StepBatchSampler(Sampler[list[int]]):
    """Infinite batch sampler: yields this rank's index list for each step, starting at ``start``
    (a global position, i.e. items consumed by all ranks so far)."""

    def __init__(self, n: int, batch_size: int, *, seed: int, start: int = 0, rank: int = 0,
                 world_size: int = 1, shuffle: bool = True):
        if n < 1:
            raise ValueError("cannot sample batches from an empty dataset")
        self.n, self.batch_size, self.seed, self.start = n, batch_size, seed, start
        self.rank, self.world_size, self.shuffle = rank, world_size, shuffle
        self._perm_epoch, self._perm = -1, np.arange(n)

    def _order(self, epoch: int) -> np.ndarray:
        if epoch != self._perm_epoch:
            if self.shuffle:
                self._perm = np.random.default_rng((self.seed, epoch)).permutation(self.n)
            self._perm_epoch = epoch
        return self._perm

    def index_at(self, position: int) -> int:
        epoch, offset = divmod(position, self.n)
        return int(self._order(epoch)[offset])

    def __iter__(self) -> Iterator[list[int]]:
        position = self.start
        step_items = self.batch_size * self.world_size
        while True:
            first = position + self.rank * self.batch_size
            yield [self.index_at(p) for p in range(first, first + self.batch_size)]
            position += step_items


class Labelled(Dataset):
    """``(item, label)`` pairs of a labelled dataset (``info.num_classes`` > 0), for class-conditional models;
    the default collate turns a batch of them into ``(B, *shape)`` items and ``(B,)`` int64 labels."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        return self.dataset[index], self.dataset.label(index)


def _seed_worker(worker_id: int) -> None:
    # numpy and python RNGs in workers follow torch's per-worker seed (torch seeds itself per worker).
    import random

    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


def train_loader(dataset: Dataset, batch_size: int, *, seed: int, start: int, rank: int, world_size: int,
                 num_workers: int, pin_memory: bool) -> DataLoader:
    sampler = StepBatchSampler(len(dataset), batch_size, seed=seed, start=start, rank=rank,
                               world_size=world_size)
    # An explicit generator keeps the loader from drawing on the global torch RNG, which the checkpoint
    # restores: creating the loader must not shift the model's random stream.
    return DataLoader(dataset, batch_sampler=sampler, num_workers=num_workers, pin_memory=pin_memory,
                      worker_init_fn=_seed_worker, generator=torch.Generator().manual_seed(seed),
                      persistent_workers=num_workers > 0)


def eval_loader(dataset: Dataset, batch_size: int, limit: int, num_workers: int = 0) -> DataLoader:
    """The first ``limit`` items of ``dataset`` in order (a fixed reference set for the metrics)."""
    indices = list(range(min(limit, len(dataset))))
    return DataLoader(torch.utils.data.Subset(dataset, indices), batch_size=batch_size, shuffle=False,
                      num_workers=num_workers)
