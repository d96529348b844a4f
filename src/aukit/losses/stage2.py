"""The stage-2 objective: masked per-AU BCE plus its two switchable terms, weighed.

Finetuning (``finetune.module``) sums them; the losses are pure functions (``aukit.losses``).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from aukit.losses.alignment import state_alignment_loss
from aukit.losses.au_bce import au_bce_loss


@dataclass(frozen=True)
class FinetuneLosses:
    """Stage 2's losses (``--model.losses.*``): masked BCE per AU, plus two switches.

    Args:
        class_weighted: weigh each AU's BCE by its rarity in the training labels.
        balance_positives: weigh each AU's positives by its negatives-to-positives ratio.
        region_supervision: weight of a BCE on a per-AU linear head over the region features
            (deep supervision; 0: off, and no such head).
        alignment_weight: weight of the vision-text alignment loss: AU k's anchor scores
            faces with AU k above faces without it (0: off).
    """

    class_weighted: bool = True
    balance_positives: bool = True
    region_supervision: float = 1.0
    alignment_weight: float = 0.1


def finetune_loss(out: dict[str, Tensor], labels: Tensor, mask: Tensor, losses: FinetuneLosses,
                  class_weights: Tensor | None = None,
                  pos_weight: Tensor | None = None) -> dict[str, Tensor]:
    """A model's outputs on a labelled batch -> its loss terms and ``loss``, their weighted sum.

    Args:
        out: the model's outputs: ``logits`` [B, A]; ``region_logits`` [B, A] (deep
            supervision of the region features, where the model has that head);
            ``au_features`` [B, A, E] and ``text_anchors`` [A, E] (the alignment loss, where
            the model reads text).
        labels: [B, A] in {0, 1} where ``mask`` [B, A] (bool) is True.
        losses: the terms' switches and weights.
        class_weights, pos_weight: [A] each, ``au_bce_loss``'s.

    Returns:
        ``bce``, ``region_bce`` and ``align`` where they are on, and ``loss``.
    """
    terms = {"bce": au_bce_loss(out["logits"], labels, mask, class_weights, pos_weight)}
    loss = terms["bce"]
    if "region_logits" in out and losses.region_supervision > 0:
        terms["region_bce"] = au_bce_loss(out["region_logits"], labels, mask, class_weights,
                                          pos_weight)
        loss = loss + losses.region_supervision * terms["region_bce"]
    if "text_anchors" in out and losses.alignment_weight > 0:
        terms["align"] = state_alignment_loss(out["au_features"], out["text_anchors"], labels,
                                              mask)
        loss = loss + losses.alignment_weight * terms["align"]
    return {**terms, "loss": loss}
