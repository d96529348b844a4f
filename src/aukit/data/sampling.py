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

``GroupedKeySampler`` does the same for batches of ``S`` groups (subjects, videos) x ``M`` items,
so that a contrastive batch holds several faces of each person among its negatives.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from aukit.utils.groups import group_codes


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


class GroupedKeySampler(DistributedSampler):
    """Keys ``epoch * N + i`` of ``N`` items in runs of ``groups_per_batch * items_per_group``:
    each run is one batch of ``S`` distinct groups x ``M`` items of each (a group's ``M`` items
    consecutive); under DDP, this rank's whole batches of the epoch.

    ``groups`` holds the group label of each item (``N`` labels, e.g. subject ids, compared as
    strings). Every epoch draws, from a generator seeded by (seed, epoch), an order of the groups
    and of each group's items, then cuts each group into chunks of ``M``: ``n`` items give
    ``ceil(n / M)`` chunks, the last completed with the group's first items of the epoch (which
    sit in another batch), so the chunks hold each item at least once and no batch repeats one.
    A group with fewer than ``M`` items is left out: repeating its items would put a copy of a
    face among its own negatives. Chunks are dealt to as many batches as they can fill with no
    batch getting two chunks of one group; a group with more chunks than there are batches, and
    the ragged remainder, sit that epoch out. The batches are then shuffled.

    Under DDP rank ``r`` takes every ``num_replicas``-th batch from ``r``; the epoch's last
    ``< num_replicas`` batches are dropped so every rank steps equally often, and ranks share no
    item of an epoch except through the completion copies above. The number of batches depends
    only on the group sizes, so ``len`` is the same every epoch. ``skip`` (in keys, a multiple of
    the batch size) drops the first batches of this rank's next iteration only, as in
    ``EpochKeySampler``.
    """

    def __init__(self, groups: Sequence[Hashable], groups_per_batch: int, items_per_group: int,
                 seed: int = 0, num_replicas: int = 1, rank: int = 0):
        if groups_per_batch < 1 or items_per_group < 1:
            raise ValueError(f"GroupedKeySampler needs groups_per_batch >= 1 and items_per_group "
                             f">= 1, got {groups_per_batch} and {items_per_group}")
        super().__init__(range(len(groups)), num_replicas=num_replicas, rank=rank, shuffle=True,
                         seed=seed)
        self.size = len(groups)
        self.groups_per_batch, self.items_per_group = groups_per_batch, items_per_group
        codes = group_codes(groups)
        by_group = np.argsort(codes, kind="stable")
        members = np.split(by_group, np.flatnonzero(np.diff(codes[by_group])) + 1)
        self.members = [m for m in members if len(m) >= items_per_group]
        chunks = np.array([math.ceil(len(m) / items_per_group) for m in self.members], int)
        self.batches = _most_batches(chunks, groups_per_batch)
        if self.batches < num_replicas:
            raise ValueError(
                f"{len(self.members)} of {len(members)} groups have at least {items_per_group} "
                f"items, which makes {self.batches} batches of {groups_per_batch} distinct groups "
                f"x {items_per_group} items per epoch, fewer than one per process "
                f"({num_replicas}); add groups, or lower the groups or items per batch")
        self.skip = 0

    @property
    def batch_size(self) -> int:
        return self.groups_per_batch * self.items_per_group

    def __len__(self) -> int:
        return self.batches // self.num_replicas * self.batch_size

    def epoch_batches(self) -> np.ndarray:
        """Every rank's batches of the current epoch as item indices ``[num_batches, S, M]``."""
        rng = np.random.default_rng([self.seed, self.epoch])
        m, per_batch = self.items_per_group, self.groups_per_batch
        chunks = []
        for g in rng.permutation(len(self.members)):
            items = rng.permutation(self.members[g])
            count = min(math.ceil(len(items) / m), self.batches)
            chunks.append(np.resize(items, count * m).reshape(count, m))  # wraps to fill up
        layout = np.concatenate(chunks)[:per_batch * self.batches]  # [S * batches, M]
        # chunk j to batch j % batches: a group's chunks are consecutive and at most `batches`
        # many, so they land in distinct batches
        batches = layout.reshape(per_batch, self.batches, m).transpose(1, 0, 2)
        return batches[rng.permutation(self.batches)]

    def __iter__(self) -> Iterator[int]:
        usable = self.batches // self.num_replicas * self.num_replicas
        mine = self.epoch_batches()[:usable][self.rank::self.num_replicas]  # [batches, S, M]
        skip, self.skip = self.skip, 0
        yield from (mine.reshape(-1)[skip:] + self.epoch * self.size).tolist()


def _most_batches(chunks: np.ndarray, per_batch: int) -> int:
    """The most batches of ``per_batch`` chunks from distinct groups that groups of ``chunks``
    ``[G]`` chunks each can fill: the largest ``b`` with ``sum(min(chunks, b)) >= per_batch * b``
    (a concave condition that holds at 0, so bisection finds it)."""
    low, high = 0, int(chunks.sum()) // per_batch
    while low < high:
        mid = (low + high + 1) // 2
        if np.minimum(chunks, mid).sum() >= per_batch * mid:
            low = mid
        else:
            high = mid - 1
    return low


class ResumableDataLoader(DataLoader):
    """A training DataLoader over an ``EpochKeySampler`` (or a given ``GroupedKeySampler`` whose
    batch size must be ``batch_size``) that Lightning checkpoints mid-epoch.

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
        if getattr(sampler, "batch_size", batch_size) != batch_size:
            raise ValueError(f"the sampler yields batches of {sampler.batch_size} keys but the "
                             f"loader batches {batch_size}; make them equal")
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
