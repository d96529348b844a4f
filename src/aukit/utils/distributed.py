"""DDP helpers that are no-ops without a process group, so losses run the same on a laptop."""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_fn
from torch import Tensor


def _initialised() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    """This process's global rank; 0 without a process group."""
    return dist.get_rank() if _initialised() else 0


def world_size() -> int:
    """The number of processes; 1 without a process group."""
    return dist.get_world_size() if _initialised() else 1


def gather_with_grad(x: Tensor) -> Tensor:
    """All-gather along dim 0 keeping the autograd graph: ``[B, ...] -> [world * B, ...]``.

    Rows ``rank * B : (rank + 1) * B`` are this process's ``x``; the backward pass sums the
    gradients every rank computed for those rows and returns them to ``x``. Every rank must pass
    the same shape (a ``DistributedSampler`` gives equal per-rank batches). Identity when
    torch.distributed is unavailable, uninitialised or has one process.
    """
    if world_size() == 1:
        return x
    return torch.cat(dist_fn.all_gather(x), dim=0)
