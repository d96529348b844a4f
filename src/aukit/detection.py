"""The base of AU detectors as LightningModules: per-split AU metrics, computed and logged."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor

from aukit.metrics import AUMetrics
from aukit.stage import StageModule


class AUDetectionModule(StageModule):
    """A ``StageModule`` whose ``forward(images, landmarks)`` returns ``logits`` [B, A]; it keeps
    ``AUMetrics`` for the training batches as they pass (logged as ``train/f1_*`` at each
    epoch's end, so the gap to ``val/f1_mean`` shows memorisation, e.g. of identities),
    validation and test, logs their F1 and AUC, and keeps the last computed values of each split
    in ``metric_values[split]`` (``AUMetrics.compute()``'s keys, for ``aukit.callbacks``).
    Subclasses set ``au_names`` and call ``init_metrics`` in ``__init__`` and
    ``update_metrics("fit", ...)`` in their training step; ``setup`` checks the data's AUs."""

    def init_metrics(self, au_names: Sequence[str]) -> None:
        self.metrics = torch.nn.ModuleDict({s: AUMetrics(list(au_names))
                                            for s in ("fit", "val", "test")})
        self.metric_values: dict[str, dict[str, float]] = {}

    def setup(self, stage: str) -> None:
        """Refuses data whose AU list is not the model's (``au_names``)."""
        found = list(self.trainer.datamodule.au_names)
        if found != list(self.au_names):
            raise ValueError(f"the model predicts {list(self.au_names)} but the data has "
                             f"{found}; train a model for this AU list")

    def update_metrics(self, split: str, logits: Tensor, batch: dict) -> None:
        """Adds a batch's predictions (``logits`` [B, A]) against its labels to ``split``."""
        self.metrics[split].update(logits.detach().sigmoid(), batch["labels"],
                                   batch["label_mask"])

    def _eval_step(self, batch: dict, split: str) -> dict[str, Tensor]:
        out = self(batch["image"], batch["landmarks"])
        self.update_metrics(split, out["logits"], batch)
        return out

    def validation_step(self, batch: dict, batch_idx: int) -> dict[str, Tensor]:
        return self._eval_step(batch, "val")  # the outputs, for aukit.callbacks

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._eval_step(batch, "test")

    def log_split(self, split: str, name: str | None = None) -> dict[str, float]:
        """Compute, reset and log ``metrics[split]`` under ``name/`` (default ``split``); keep
        the values in ``metric_values[name]``."""
        values = {k: float(v) for k, v in self.metrics[split].compute().items()}
        self.metrics[split].reset()
        split = name or split
        self.metric_values[split] = values
        # the values are already synced (equal on every rank); sync_dist averages equal numbers,
        # which leaves them unchanged and tells Lightning they are global
        self.log_dict({f"{split}/{k}": v for k, v in values.items()
                       if k.startswith(("f1_", "auc_mean"))}, sync_dist=True)
        return values

    def on_train_epoch_end(self) -> None:
        if self.metrics["fit"].update_count:  # a resumed run may start at an epoch's end
            self.log_split("fit", "train")

    def on_validation_epoch_end(self) -> None:
        values = self.log_split("val")
        if not self.trainer.sanity_checking:
            rank_zero_info(f"epoch {self.current_epoch} validation mean F1 "
                           f"{100 * values['f1_mean']:.1f}")

    def on_test_epoch_end(self) -> None:
        self.log_split("test")
