"""Stage-1 region loss: per-AU InfoNCE between two augmented views."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from aukit.utils.distributed import gather_with_grad, rank


def symmetric_info_nce(logits12: Tensor, logits21: Tensor, gathered: bool,
                       groups: Tensor | None = None) -> Tensor:
    """Mean cross-entropy of both directions; row ``i`` of local queries has key ``rank * B + i``.

    Args:
        logits12: ``[..., B, K]`` view-1 queries (local rows) against view-2 keys (``K`` columns,
            the global batch when ``gathered``).
        logits21: ``[..., B, K]`` view-2 queries against view-1 keys.
        gathered: whether the keys were all-gathered, which shifts the positive column by
            ``rank * B``.
        groups: ``[B]`` group ids (persons) of the local batch, or None; given, query ``i``'s
            negatives are only the keys of its own group (keys not gathered, ``K == B``).
    """
    if logits12.shape != logits21.shape:
        raise ValueError(f"logits of the two directions differ in shape: {tuple(logits12.shape)}"
                         f" vs {tuple(logits21.shape)}")
    batch, keys = logits12.shape[-2:]
    offset = rank() * batch if gathered else 0
    if offset + batch > keys:
        raise ValueError(f"{keys} keys cannot hold the positives of {batch} queries at offset "
                         f"{offset}; gather the keys from every rank")
    if groups is not None:
        if gathered or groups.shape != (batch,) or keys != batch:
            raise ValueError(f"group-restricted negatives need {batch} local keys and [{batch}] "
                             f"group ids, got {keys} keys and ids of shape {tuple(groups.shape)}")
        other = groups[:, None] != groups[None, :]  # [B, K]: keys of another group
        logits12 = logits12.masked_fill(other, float("-inf"))
        logits21 = logits21.masked_fill(other, float("-inf"))
    targets = torch.arange(offset, offset + batch, device=logits12.device)
    targets = targets.expand(logits12.shape[:-1]).reshape(-1)  # [... * B]
    loss12 = F.cross_entropy(logits12.reshape(-1, keys).float(), targets)
    loss21 = F.cross_entropy(logits21.reshape(-1, keys).float(), targets)
    return 0.5 * (loss12 + loss21)


def region_contrastive_loss(z1: Tensor, z2: Tensor, temperature: float = 0.1,
                            gather: bool = True, groups: Tensor | None = None) -> Tensor:
    """Per-AU InfoNCE between two views, symmetric and averaged over AUs.

    For AU ``k`` the query is image ``i``'s AU-``k`` embedding in one view; its positive is the
    same image's AU ``k`` in the other view and the negatives are AU ``k`` of every other image
    (the global batch under DDP when ``gather``), or, with ``groups``, of the other images of
    the same person only: then telling people apart earns nothing, only telling a person's
    expressions apart does. Embeddings are L2-normalised here.

    Args:
        z1: ``[B, A, D]`` AU embeddings of view 1.
        z2: ``[B, A, D]`` AU embeddings of view 2 (same images, same AU order).
        temperature: softmax temperature on the cosine similarities.
        gather: all-gather the keys across DDP ranks (a no-op without a process group); not
            with ``groups``.
        groups: ``[B]`` integer person ids, or None (every other image is a negative).

    Returns:
        A scalar loss; ``log(B)`` for unrelated embeddings, near 0 for aligned distinct ones.
    """
    if z1.ndim != 3 or z1.shape != z2.shape:
        raise ValueError(f"z1 and z2 must both be [B, A, D] with equal shapes, got "
                         f"{tuple(z1.shape)} and {tuple(z2.shape)}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    q1, q2 = F.normalize(z1.float(), dim=-1), F.normalize(z2.float(), dim=-1)
    gather = gather and groups is None
    k1, k2 = (gather_with_grad(q1), gather_with_grad(q2)) if gather else (q1, q2)
    logits12 = torch.einsum("bad,cad->abc", q1, k2) / temperature  # [A, B, K]
    logits21 = torch.einsum("bad,cad->abc", q2, k1) / temperature  # [A, B, K]
    return symmetric_info_nce(logits12, logits21, gathered=gather, groups=groups)

