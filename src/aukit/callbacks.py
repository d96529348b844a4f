"""Reporting callbacks of stage 2: what a run writes besides checkpoints and scalar logs.

Both read what the finetune module already computed: its per-split metric values
(``module.metric_values[split]``, ``AUMetrics.compute()``'s keys, set when the split's epoch
ends), its AU names (``module.au_names``) and, for the maps, the outputs its
``validation_step`` returns. The finetune configs (``conf/finetune/*.yaml``) list both.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor

from aukit.metrics import format_f1_table
from aukit.visualize import activation_grid

REPORT_METRICS = ("f1", "precision", "recall", "accuracy", "auc")


def _run_folder(trainer: L.Trainer) -> Path:
    # the logger's folder: checkpoint hyperparameters override CLI arguments under `test
    # --ckpt_path`, so the place is set with --trainer.logger.init_args.*
    # (fast_dev_run's stand-in logger has no folder: the trainer's root then)
    log_dir = trainer.logger.log_dir if trainer.logger is not None else None
    return Path(log_dir or trainer.default_root_dir)


class TestReport(L.Callback):
    """After a test, prints the per-AU table and writes ``test_report.json`` (AUs, every metric,
    the tested checkpoint, the model config) and ``test_report.csv`` (one row per AU and the
    mean: f1, precision, recall, accuracy, auc) into the run's log folder, on rank 0."""

    __test__ = False  # not a pytest test class

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        values = pl_module.metric_values.get("test")
        if values is None:
            return
        names = list(pl_module.au_names)
        rank_zero_info(f"\ntest per-AU results ({len(names)} AUs):\n"
                       f"{format_f1_table(values, names)}")
        if not trainer.is_global_zero:
            return
        folder = _run_folder(trainer)
        folder.mkdir(parents=True, exist_ok=True)
        config = getattr(pl_module, "model_config", {})
        report = {"aus": names, "metrics": values,
                  "checkpoint": str(trainer.ckpt_path) if trainer.ckpt_path else None,
                  "architecture": config.get("architecture"),
                  "backbone": config.get("encoder", {}).get("backbone"),
                  "model": config}
        (folder / "test_report.json").write_text(json.dumps(report, indent=2))
        rows = ["au," + ",".join(REPORT_METRICS)]
        for name in names + ["mean"]:
            rows.append(",".join([name] + [f"{values.get(f'{m}_{name}', np.nan):.6f}"
                                           for m in REPORT_METRICS]))
        (folder / "test_report.csv").write_text("\n".join(rows) + "\n")
        rank_zero_info(f"test report: {folder / 'test_report.json'} and test_report.csv")


class ActivationMapLogger(L.Callback):
    """After each validation epoch (not the sanity check), logs to TensorBoard the per-AU
    activation maps of the first ``num_images`` faces of the first validation batch
    (``val/activation_maps_<i>``, one grid of AU tiles each) and the per-AU F1 table
    (``val/f1_table``). Does nothing for models without maps or loggers without images."""

    def __init__(self, num_images: int = 2) -> None:
        self.num_images = num_images
        self._shown: tuple[Tensor, Tensor, Tensor] | None = None

    def on_validation_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule,
                                outputs: Any, batch: Any, batch_idx: int,
                                dataloader_idx: int = 0) -> None:
        if batch_idx or dataloader_idx or not isinstance(outputs, dict) \
                or "act_maps" not in outputs:
            return
        n = self.num_images
        self._shown = (batch["image"][:n].detach().cpu(),
                       outputs["act_maps"][:n].detach().float().cpu(),
                       outputs["logits"][:n].detach().float().sigmoid().cpu())

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        shown, self._shown = self._shown, None
        experiment = getattr(trainer.logger, "experiment", None)
        if trainer.sanity_checking or not trainer.is_global_zero \
                or not hasattr(experiment, "add_image"):
            return
        names = list(pl_module.au_names)
        if shown is not None:
            for i, (image, maps, probs) in enumerate(zip(*shown, strict=True)):
                experiment.add_image(f"val/activation_maps_{i}",
                                     activation_grid(image, maps, names, probs),
                                     trainer.global_step, dataformats="HWC")
        values = pl_module.metric_values.get("val")
        if values is not None:
            experiment.add_text("val/f1_table", format_f1_table(values, names),
                                trainer.global_step)
