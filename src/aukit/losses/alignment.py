"""Vision-text alignment: active AU features are pulled towards their own AU's text anchor."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def alignment_loss(au_features: Tensor, text_anchors: Tensor, labels: Tensor,
                   mask: Tensor | None = None, temperature: float = 0.1) -> Tensor:
    """InfoNCE over AU anchors for every known-active (b, k).

    au_features [B, A, E]; text_anchors [A, E]; labels [B, A] in {0, 1}; mask [B, A] bool,
    True = label known (None = all known). For each active (b, k) the target is anchor k and
    the other A - 1 anchors are negatives, on cosine similarity / ``temperature``. Returns the
    mean over active pairs; 0 (still differentiable) when nothing is active.
    """
    if au_features.dim() != 3 or text_anchors.shape != au_features.shape[1:]:
        raise ValueError(f"expected au_features [B, A, E] and text_anchors [A, E], got "
                         f"{tuple(au_features.shape)} and {tuple(text_anchors.shape)}")
    if labels.shape != au_features.shape[:2]:
        raise ValueError(f"labels must be [B, A] = {tuple(au_features.shape[:2])}, got "
                         f"{tuple(labels.shape)}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    active = labels == 1
    if mask is not None:
        if mask.shape != labels.shape or mask.dtype != torch.bool:
            raise ValueError(f"mask must be a bool tensor of shape {tuple(labels.shape)}, got "
                             f"{mask.dtype} {tuple(mask.shape)}")
        active = active & mask
    features = F.normalize(au_features.float(), dim=-1)
    anchors = F.normalize(text_anchors.float(), dim=-1)
    logits = features @ anchors.T / temperature  # [B, A, A]: AU k's feature vs anchor j
    targets = active.nonzero()[:, 1]  # [P]: the own AU of each active (b, k)
    if targets.numel() == 0:
        return logits.sum() * 0.0
    return F.cross_entropy(logits[active], targets)
