"""``last.ckpt`` that is the last state: the checkpoint a killed or finished run resumes from.

Lightning's ``ModelCheckpoint(monitor=..., save_last=True)`` writes ``last.ckpt`` only when a
top-k checkpoint is written, i.e. when the monitored metric improves: after a run whose
validation peaked early, "last" is the best, and a resume loses the steps since. The configs
therefore keep the monitored callback for the best checkpoints (``save_last: false``) and add
``LastCheckpoint`` beside it.
"""

from __future__ import annotations

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint


class LastCheckpoint(ModelCheckpoint):
    """Writes ``last.ckpt`` (only that file) every ``every_n_train_steps`` optimiser steps (0:
    never mid-epoch), at the end of every training epoch and at the end of training, whatever
    the validation metrics did, so it always holds the newest state.

    Args:
        every_n_train_steps: also save every this many optimiser steps (0: only at epoch ends),
            so a killed run loses at most that many.
        dirpath: where to write it (None: the logger's ``checkpoints/`` folder).
    """

    def __init__(self, every_n_train_steps: int = 0, dirpath: str | None = None) -> None:
        super().__init__(dirpath=dirpath, save_top_k=0, save_last=True,
                         every_n_train_steps=every_n_train_steps or None,
                         save_on_train_epoch_end=True)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self._should_skip_saving_checkpoint(trainer):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self._should_skip_saving_checkpoint(trainer):  # steps since the last save
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))


def last_checkpoint_path(trainer: L.Trainer) -> str:
    """The newest ``last.ckpt`` a run's checkpoint callbacks wrote ("" when none)."""
    return next((c.last_model_path for c in trainer.checkpoint_callbacks if c.last_model_path),
                "")
