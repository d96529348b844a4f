"""Vision-text alignment losses between AU features and their AU's text anchor.

``state_alignment_loss`` (the default) carries AU *state*: AU k's text anchor must score the
faces where AU k is present above those where it is absent, so AU k's feature has to depend on
the face. (Version 1 only contrasted AU slots, AU k's feature against the other AUs' anchors,
which a learned per-AU query satisfies without looking at the face; git keeps it.)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def _check(au_features: Tensor, text_anchors: Tensor, labels: Tensor, mask: Tensor | None,
           temperature: float) -> Tensor:
    """Validate the shared inputs; returns the known-label mask [B, A] bool."""
    if au_features.dim() != 3 or text_anchors.shape != au_features.shape[1:]:
        raise ValueError(f"expected au_features [B, A, E] and text_anchors [A, E], got "
                         f"{tuple(au_features.shape)} and {tuple(text_anchors.shape)}")
    if labels.shape != au_features.shape[:2]:
        raise ValueError(f"labels must be [B, A] = {tuple(au_features.shape[:2])}, got "
                         f"{tuple(labels.shape)}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if mask is None:
        return torch.ones_like(labels, dtype=torch.bool)
    if mask.shape != labels.shape or mask.dtype != torch.bool:
        raise ValueError(f"mask must be a bool tensor of shape {tuple(labels.shape)}, got "
                         f"{mask.dtype} {tuple(mask.shape)}")
    return mask


def state_alignment_loss(au_features: Tensor, text_anchors: Tensor, labels: Tensor,
                         mask: Tensor | None = None, temperature: float = 0.1) -> Tensor:
    """Per AU, each face where it is present against all faces of the batch where it is absent.

    au_features [B, A, E]; text_anchors [A, E]; labels [B, A] in {0, 1}; mask [B, A] bool,
    True = label known (None = all known). With ``s[b, k] = cos(feature[b, k], anchor[k]) /
    temperature``, every known-present (b, k) is an InfoNCE query whose positive is ``s[b, k]``
    and whose negatives are ``s[b', k]`` for the known-absent faces b' of AU k:
    ``softplus(logsumexp_b' s[b', k] - s[b, k])``. A feature that ignores the face scores
    present and absent faces alike and cannot go below ``log(1 + #absent)``. Returns the mean
    over present (b, k) whose AU has an absent face in the batch; 0 (differentiable) if none.
    """
    known = _check(au_features, text_anchors, labels, mask, temperature)
    features = F.normalize(au_features.float(), dim=-1)
    anchors = F.normalize(text_anchors.float(), dim=-1)
    scores = (features * anchors).sum(-1) / temperature  # [B, A]
    present, absent = known & (labels == 1), known & (labels == 0)
    negatives = scores.masked_fill(~absent, float("-inf")).logsumexp(0)  # [A]
    queries = present & absent.any(0)  # [B, A]
    if not queries.any():
        return scores.sum() * 0.0
    return F.softplus(negatives.expand_as(scores)[queries] - scores[queries]).mean()
