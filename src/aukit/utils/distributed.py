"""DDP helpers that are no-ops without a process group, so losses run the same on a laptop."""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor
from torch.autograd.function import FunctionCtx


def _initialised() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    """This process's global rank; 0 without a process group."""
    return dist.get_rank() if _initialised() else 0


def world_size() -> int:
    """The number of processes; 1 without a process group."""
    return dist.get_world_size() if _initialised() else 1


class _GatherWithGrad(torch.autograd.Function):
    """All-gather forward; backward sums every rank's gradient and keeps this rank's rows.

    Written out rather than ``torch.distributed.nn.functional.all_gather`` (deprecated), whose
    gloo backward (all-to-all) returned wrong gradients in our two-process test; all-reduce
    works on every backend.
    """

    @staticmethod
    def forward(ctx: FunctionCtx, x: Tensor) -> Tensor:
        x = x.contiguous()
        parts = [torch.empty_like(x) for _ in range(world_size())]
        dist.all_gather(parts, x)
        ctx.rows = x.shape[0]
        return torch.cat(parts)

    @staticmethod
    def backward(ctx: FunctionCtx, grad: Tensor) -> Tensor:
        grad = grad.contiguous()
        dist.all_reduce(grad)
        start = rank() * ctx.rows
        return grad[start:start + ctx.rows]


def gather_with_grad(x: Tensor) -> Tensor:
    """All-gather along dim 0 keeping the autograd graph: ``[B, ...] -> [world * B, ...]``.

    Rows ``rank * B : (rank + 1) * B`` are this process's ``x``; the backward pass sums the
    gradients every rank computed for those rows and returns them to ``x``. Every rank must pass
    the same shape (a ``DistributedSampler`` gives equal per-rank batches). Identity when
    torch.distributed is unavailable, uninitialised or has one process.
    """
    if world_size() == 1:
        return x
    return _GatherWithGrad.apply(x)


def all_reduce_sum(x: Tensor) -> Tensor:
    """``x`` summed over every rank (no gradient); ``x`` itself without a process group."""
    if world_size() == 1:
        return x
    x = x.detach().clone()
    dist.all_reduce(x)
    return x
