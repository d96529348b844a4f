"""Masked, per-AU weighted binary cross-entropy for multi-label AU detection."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def au_bce_loss(logits: Tensor, labels: Tensor, mask: Tensor | None = None,
                class_weights: Tensor | None = None, pos_weight: Tensor | None = None) -> Tensor:
    """Weighted BCE averaged over the known labels (ME-GraphAU style).

    logits [B, A]; labels [B, A] in {0, 1} (any value where ``mask`` is False, e.g. BP4D's 9);
    mask [B, A] bool, True = label known (None = all known); class_weights [A], e.g. inverse
    training-fold occurrence normalised to mean 1, multiplies every element of AU k's BCE;
    pos_weight [A] (e.g. negatives / positives per AU) multiplies the positive term only, so rare
    AUs are not learnt as "always absent". Returns a scalar; 0 (still differentiable) when no
    label is known.
    """
    if logits.dim() != 2 or labels.shape != logits.shape:
        raise ValueError(f"logits and labels must both be [B, A], got {tuple(logits.shape)} "
                         f"and {tuple(labels.shape)}")
    if mask is None:
        mask = labels.new_ones(labels.shape, dtype=torch.bool)
    if mask.shape != logits.shape or mask.dtype != torch.bool:
        raise ValueError(f"mask must be a bool tensor of shape {tuple(logits.shape)}, got "
                         f"{mask.dtype} {tuple(mask.shape)}")
    # unknown labels (e.g. 9) would be invalid BCE targets even with zero weight
    targets = labels.float().where(mask, 0.0)
    loss = F.binary_cross_entropy_with_logits(
        logits.float(), targets, reduction="none",
        pos_weight=None if pos_weight is None else pos_weight.to(logits.device).float())
    if class_weights is not None:
        if class_weights.shape != logits.shape[1:]:
            raise ValueError(f"class_weights must be [A] = [{logits.shape[1]}], got "
                             f"{tuple(class_weights.shape)}")
        loss = loss * class_weights.to(loss)
    return loss.where(mask, 0.0).sum() / mask.sum().clamp_min(1)
