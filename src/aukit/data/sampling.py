"""Training batches that are a pure function of (seed, epoch, position), so a run stopped
mid-epoch resumes to the same result, on one process or under DDP.

The sampler yields *sample keys* ``epoch * N + i`` rather than indices ``i``: datasets read
sample ``key % N`` and seed its augmentation with the key (see ``datasets.apply_views``), so
what a batch holds does not depend on worker count, worker state or where a run restarted.
The loader remembers how many batches of the epoch it has served and, after
``load_state_dict``, skips them without decoding anything.

Under DDP every rank draws the same seeded permutation and takes every ``num_replicas``-th key
from position ``rank`` (the epoch padded to equal length, as ``DistributedSampler`` does, so
every rank runs the same number of steps). The sampler is a ``DistributedSampler`` so Lightning
keeps it rather than wrapping it in a ``DistributedSamplerWrapper``, which would ignore the skip.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler


class EpochKeySampler(DistributedSampler):
    """Seeded per-epoch shuffle of ``size`` samples as keys ``epoch * size + i``; this rank's
    share of them under DDP (``num_replicas`` processes, this one ``rank``).

    Lightning calls ``set_epoch`` at every epoch start (also when resuming); ``skip`` drops the
    first samples of this rank's next iteration only. Ranks never share a key except the few
    repeated to pad the epoch to a multiple of ``num_replicas``.
    """

    def __init__(self, size: int, shuffle: bool = True, seed: int = 0, num_replicas: int = 1,
                 rank: int = 0):
        if size < 1:
            raise ValueError(f"EpochKeySampler needs at least one sample, got size={size}")
        super().__init__(range(size), num_replicas=num_replicas, rank=rank, shuffle=shuffle,
                         seed=seed)
        self.size = size
        self.skip = 0

    def __len__(self) -> int:
        return math.ceil(self.size / self.num_replicas)

    def __iter__(self) -> Iterator[int]:
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
            order = torch.randperm(self.size, generator=generator)
        else:
            order = torch.arange(self.size)
        padded = len(self) * self.num_replicas
        order = order.repeat(math.ceil(padded / self.size))[:padded]
        mine = order[self.rank::self.num_replicas]
        skip, self.skip = self.skip, 0
        yield from (mine[skip:] + self.epoch * self.size).tolist()


class ResumableDataLoader(DataLoader):
    """A training DataLoader over an ``EpochKeySampler`` that Lightning checkpoints mid-epoch.

    ``state_dict`` records the epoch and the batches served so far (Lightning fetches a sized
    loader without read-ahead, so that is what the trainer consumed); Lightning saves it in the
    checkpoint and hands it back through ``load_state_dict`` on resume. A resume into a later
    epoch (the checkpoint was taken at an epoch's end) skips nothing. Under DDP pass this
    process's ``rank`` of ``num_replicas``: every rank serves the same number of batches, so the
    count rank 0 saved holds for all.
    """

    def __init__(self, dataset: Dataset, batch_size: int, seed: int = 0, num_replicas: int = 1,
                 rank: int = 0, **kwargs: Any):
        kwargs.pop("shuffle", None)
        sampler = kwargs.pop("sampler", None) or EpochKeySampler(len(dataset), True, seed,
                                                                 num_replicas, rank)
        # its own generator: starting an epoch's iterator must not draw from the global torch RNG
        # (that would shift stochastic depth draws on resume)
        kwargs.setdefault("generator", torch.Generator().manual_seed(seed))
        super().__init__(dataset, batch_size=batch_size, sampler=sampler, **kwargs)
        # read back by Lightning if it re-creates the loader
        self.seed, self.num_replicas, self.rank = seed, num_replicas, rank
        self._served = 0
        self._resume: tuple[int, int] | None = None

    def __iter__(self) -> Iterator:
        sampler = self.sampler
        self._served = 0
        if self._resume is not None and getattr(sampler, "epoch", None) == self._resume[0]:
            self._served = self._resume[1]
            sampler.skip = self._served * self.batch_size
        self._resume = None
        for batch in super().__iter__():
            self._served += 1
            yield batch

    def state_dict(self) -> dict[str, int]:
        return {"epoch": getattr(self.sampler, "epoch", 0), "consumed": self._served}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self._resume = (state["epoch"], state["consumed"])
