"""LightningCLI wiring shared by both stages."""

from __future__ import annotations

import os
from pathlib import Path

from lightning.pytorch.cli import LightningCLI

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")


class AUCLI(LightningCLI):
    """LightningCLI in subclass mode with the links both stages need.

    The data module owns the image size; the model reads it from there so it is written once.
    """

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("save_config_kwargs", {"overwrite": True})
        kwargs.setdefault("seed_everything_default", 0)
        super().__init__(*args, **kwargs)

    def add_arguments_to_parser(self, parser) -> None:
        parser.link_arguments("data.image_size", "model.image_size")

    def after_fit(self) -> None:
        trainer = self.trainer
        if not trainer.is_global_zero:
            return
        callback = trainer.checkpoint_callback
        best = getattr(callback, "best_model_path", "") or "-"
        last = getattr(callback, "last_model_path", "") or "-"
        logs = trainer.logger.log_dir if trainer.logger is not None else "-"
        print(f"\nfinished: last checkpoint {last} | best {best} | "
              f"TensorBoard logs {logs} (tensorboard --logdir {Path(logs).parent})")
