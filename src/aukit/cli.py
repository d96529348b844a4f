"""LightningCLI wiring shared by both stages."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import torch
from lightning.pytorch.cli import LightningCLI

from aukit.performance import Performance

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
# StageModule normalises images in on_after_batch_transfer on purpose (one home for both stages)
warnings.filterwarnings("ignore", message="You have overridden `on_after_batch_transfer`")

OOM_HINT = ("the batch does not fit in device memory: lower --data.batch_size (keep the effective "
            "batch with --trainer.accumulate_grad_batches N), use --trainer.precision bf16-mixed, "
            "or a smaller --data.image_size / --model.backbone")


def check_trainer(accelerator: str, devices: int | str | list | None,
                  precision: str | int | None) -> None:
    """Refuse, with the fix, what Lightning reports unclearly or not at all: a GPU preset where
    torch sees no GPU ("No supported gpu backend found!"), more GPUs than the machine has, and
    bf16 on a GPU without bf16 units (pre-Ampere: kernels fail or emulate it slowly)."""
    if accelerator not in ("gpu", "cuda"):
        return
    if not torch.cuda.is_available():
        raise ValueError(f"--trainer.accelerator {accelerator} (the gpu / ddp / multinode "
                         "presets) needs a CUDA GPU, but torch sees none: use "
                         "-c conf/trainer/cpu.yaml (TRAINER=cpu), or install a CUDA build of "
                         "torch and check nvidia-smi")
    found = torch.cuda.device_count()
    if str(devices).isdigit() and int(devices) > found:
        raise ValueError(f"asked for {devices} GPUs but this machine has {found}: use "
                         f"--trainer.devices {found} (or -1 for all of them)")
    if str(precision).startswith("bf16") \
            and not torch.cuda.is_bf16_supported(including_emulation=False):
        raise ValueError(f"precision {precision} needs a GPU with bf16 support (Ampere or newer); "
                         f"{torch.cuda.get_device_name()} has none: use --trainer.precision "
                         "16-mixed")


class AUCLI(LightningCLI):
    """LightningCLI in subclass mode with the links both stages need.

    The data module owns the image size; the model reads it from there so it is written once.
    ``performance:`` (channels-last, ``torch.compile``) is the ``aukit.performance.Performance``
    callback, always added.
    A device out-of-memory error is re-raised with the settings that fix it.
    """

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("save_config_kwargs", {"overwrite": True})
        kwargs.setdefault("seed_everything_default", 0)
        try:
            super().__init__(*args, **kwargs)
        except torch.OutOfMemoryError as err:
            raise torch.OutOfMemoryError(f"{err}\n{OOM_HINT}") from err

    def add_arguments_to_parser(self, parser) -> None:
        parser.link_arguments("data.image_size", "model.image_size")
        # always present, set by the trainer presets under `performance:`
        parser.add_lightning_class_args(Performance, "performance")

    def before_instantiate_classes(self) -> None:
        config = self.config.get(self.subcommand, self.config) if self.subcommand else self.config
        trainer = config.get("trainer", {})
        check_trainer(str(trainer.get("accelerator", "auto")), trainer.get("devices"),
                      trainer.get("precision"))

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
