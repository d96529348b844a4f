"""Masked per-AU detection metrics (F1, precision, recall, accuracy, ROC AUC), correct under DDP.

F1 and friends are counted over the whole split (sum of per-AU confusion counts across batches
and ranks) and follow ``sklearn`` with ``zero_division=0``: a ratio whose denominator is 0 is 0.
A frame is predicted positive when its probability is ``>= threshold``. Unknown labels
(``mask == False``, e.g. BP4D's 9) are left out of every metric of that AU; an AU with no known
label in the split has no score (nan, "n/a" in tables) and is left out of the means.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torchmetrics
from torch import Tensor
from torchmetrics.utilities import dim_zero_cat

_COUNTS = ("tp", "fp", "fn", "tn")
_SCORES = ("probs", "labels", "mask")


def _ratio(num: Tensor, den: Tensor) -> Tensor:
    """``num / den`` in float64, 0 where ``den == 0`` (sklearn's ``zero_division=0``)."""
    return torch.where(den > 0, num.double() / den.clamp_min(1).double(), 0.0)


def roc_auc(scores: Tensor, labels: Tensor) -> float:
    """ROC AUC of ``scores`` ``[N]`` for bool ``labels`` ``[N]``; nan unless both classes occur.

    Mann-Whitney U with tied scores sharing their average rank, which equals sklearn's
    trapezoidal ``roc_auc_score``.
    """
    positives = int(labels.sum())
    negatives = labels.numel() - positives
    if positives == 0 or negatives == 0:
        return math.nan
    _, inverse, counts = torch.unique(scores, return_inverse=True, return_counts=True)
    ends = counts.cumsum(0).double()
    ranks = (ends - (counts.double() - 1) / 2)[inverse]  # 1-based, ties averaged
    rank_sum = float(ranks[labels].sum())
    return (rank_sum - positives * (positives + 1) / 2) / (positives * negatives)


class AUMetrics(torchmetrics.Metric):
    """Per-AU F1 / precision / recall / accuracy / ROC AUC over a whole split, with masks.

    ``compute()`` returns 0-d tensors keyed ``f1_<AU>``, ``precision_<AU>``, ``recall_<AU>``,
    ``accuracy_<AU>``, ``auc_<AU>`` and ``<metric>_mean``. Every metric of an AU without known
    labels is nan, and ``auc_<AU>`` also when its known labels hold one class only; the means
    skip nans. Confusion counts are summed across ranks, the scores for AUC concatenated;
    ``kwargs`` go to ``torchmetrics.Metric`` (``sync_on_compute=False`` for a computation only
    one rank runs).
    """

    full_state_update = False
    is_differentiable = False
    higher_is_better = True

    def __init__(self, au_names: Sequence[str], threshold: float = 0.5, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.au_names = list(au_names)
        if not self.au_names or len(set(self.au_names)) != len(self.au_names):
            raise ValueError(f"au_names must be a non-empty list without repeats, got {au_names}")
        if not 0.0 < threshold < 1.0:
            raise ValueError(f"threshold must lie in (0, 1), got {threshold}")
        self.threshold = threshold
        num_aus = len(self.au_names)
        for name in _COUNTS:
            self.add_state(name, torch.zeros(num_aus, dtype=torch.long), dist_reduce_fx="sum")
        for name in _SCORES:
            self.add_state(name, [], dist_reduce_fx="cat")

    def update(self, probs: Tensor, labels: Tensor, mask: Tensor) -> None:
        """Add a batch: ``probs`` ``[B, A]`` in [0, 1], ``labels`` ``[B, A]`` 0/1 where known,
        ``mask`` ``[B, A]`` True where the label is known."""
        expected = (probs.shape[0], len(self.au_names))
        if probs.ndim != 2 or probs.shape != labels.shape or probs.shape != mask.shape \
                or tuple(probs.shape) != expected:
            raise ValueError(f"probs, labels and mask must all be [B, A] with A="
                             f"{len(self.au_names)} ({self.au_names}); got {tuple(probs.shape)}, "
                             f"{tuple(labels.shape)}, {tuple(mask.shape)}")
        mask = mask.bool()
        if probs.numel() and (probs.min() < 0 or probs.max() > 1):
            raise ValueError("probs must be probabilities in [0, 1]; apply sigmoid to logits first")
        known = labels[mask]
        if ((known != 0) & (known != 1)).any():
            raise ValueError("labels must be 0 or 1 where mask is True; mask unknown labels "
                             "(e.g. BP4D's 9) instead of passing them")
        predicted = probs >= self.threshold
        present = (labels == 1) & mask
        absent = (labels == 0) & mask
        self.tp += (predicted & present).sum(0)
        self.fp += (predicted & absent).sum(0)
        self.fn += (~predicted & present).sum(0)
        self.tn += (~predicted & absent).sum(0)
        self.probs.append(probs.detach())
        self.labels.append(present)
        self.mask.append(mask)

    def compute(self) -> dict[str, Tensor]:
        per_au = {
            "f1": _ratio(2 * self.tp, 2 * self.tp + self.fp + self.fn),
            "precision": _ratio(self.tp, self.tp + self.fp),
            "recall": _ratio(self.tp, self.tp + self.fn),
            "accuracy": _ratio(self.tp + self.tn, self.tp + self.fp + self.fn + self.tn),
            "auc": self._auc(),
        }
        known = (self.tp + self.fp + self.fn + self.tn) > 0
        for metric in ("f1", "precision", "recall", "accuracy"):
            per_au[metric] = torch.where(known, per_au[metric], math.nan)
        out: dict[str, Tensor] = {}
        for metric, values in per_au.items():
            out[f"{metric}_mean"] = values.nanmean()
            out.update({f"{metric}_{au}": value for au, value in zip(self.au_names, values,
                                                                     strict=True)})
        return out

    def _auc(self) -> Tensor:
        """``[A]`` ROC AUC from the concatenated scores; nan for one-class (or unseen) AUs."""
        num_aus = len(self.au_names)
        if isinstance(self.probs, list) and not self.probs:  # a tensor once synced
            return torch.full((num_aus,), math.nan, dtype=torch.float64, device=self.tp.device)
        probs, labels, mask = (dim_zero_cat(getattr(self, name)) for name in _SCORES)
        return torch.tensor([roc_auc(probs[mask[:, k], k], labels[mask[:, k], k])
                             for k in range(num_aus)], dtype=torch.float64, device=self.tp.device)


def format_f1_table(metrics: Mapping[str, float | Tensor], au_names: Sequence[str],
                    prefix: str = "") -> str:
    """A Markdown table of per-AU F1, precision, recall and AUC (percent) plus the mean row, and
    a footnote saying why any cell is "n/a" and how many AUs the means cover.

    ``metrics`` holds ``AUMetrics.compute()``'s keys, optionally behind ``prefix`` (``"val/"``).
    """
    columns = (("F1", "f1"), ("Precision", "precision"), ("Recall", "recall"), ("AUC", "auc"))

    def cell(key: str) -> str:
        if prefix + key not in metrics:
            raise KeyError(f"metric {prefix + key!r} missing; pass AUMetrics.compute() output "
                           f"(with prefix={prefix!r} if its keys carry one)")
        value = float(metrics[prefix + key])
        return "n/a" if math.isnan(value) else f"{100 * value:.1f}"

    lines = ["| AU | " + " | ".join(title for title, _ in columns) + " |",
             "|---|" + "---:|" * len(columns)]
    for row, suffix in [(au, au) for au in au_names] + [("**mean**", "mean")]:
        lines.append(f"| {row} | " + " | ".join(cell(f"{key}_{suffix}") for _, key in columns)
                     + " |")
    scored = {key: sum(cell(f"{key}_{au}") != "n/a" for au in au_names) for key in ("f1", "auc")}
    notes = []
    if scored["f1"] < len(au_names):
        notes.append(f"n/a: no known labels for that AU in this split; the means are over the "
                     f"{scored['f1']} of {len(au_names)} AUs that have some.")
    if scored["auc"] < scored["f1"]:
        notes.append(f"AUC n/a: the AU's known labels hold one class only; the AUC mean is over "
                     f"{scored['auc']} AUs.")
    return "\n".join(lines + ([""] + notes if notes else []))
