"""LightningCLI wiring shared by both stages."""

from __future__ import annotations

import linecache
import os
import re
import sys
import warnings
from pathlib import Path

import lightning.pytorch as pl
import torch
from jsonargparse import ActionConfigFile
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.utilities.exceptions import MisconfigurationException

from aukit.checkpoint import STAGE_HINT, read_checkpoint
from aukit.checkpointing import LastCheckpoint, last_checkpoint_path
from aukit.configs import resolve_config
from aukit.performance import Performance

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
# StageModule normalises images in on_after_batch_transfer on purpose (one home for both stages)
warnings.filterwarnings("ignore", message="You have overridden `on_after_batch_transfer`")

OOM_HINT = ("the batch does not fit in device memory: lower --data.batch_size (keep the effective "
            "batch with --trainer.accumulate_grad_batches N), use --trainer.precision bf16-mixed, "
            "or a smaller --data.image_size / --model.encoder.backbone")


DEBUG_VARIABLE = "AUKIT_DEBUG"
# what the library raises for bad data, configuration and checkpoints; a user error only when an
# explicit `raise` in aukit or a stage package threw it (see user_error_message)
OWN_ERROR_TYPES = (ValueError, OSError, ImportError, FloatingPointError)
# the operating system names the path in these, wherever they come from
PATH_ERROR_TYPES = (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError)
_FRAME_LINE = re.compile(r'^\s*File "(?P<file>[^"]+)", line \d+, in ', re.MULTILINE)


class UserError(ValueError):
    """A problem with the user's data, configuration or checkpoint; the message names the file,
    row or value and the fix, and the entry points print it without a traceback."""


def _own_file(filename: str) -> bool:
    """Whether ``filename`` is part of aukit or of a stage package (``finetune``, ``pretrain``)."""
    roots = [Path(__file__).parent] + [Path(m.__file__).parent for m in
                                       (sys.modules.get("finetune"), sys.modules.get("pretrain"))
                                       if m is not None and getattr(m, "__file__", None)]
    path = Path(filename).resolve()
    return any(path.is_relative_to(root.resolve()) for root in roots)


def _origin(err: BaseException) -> tuple[str, str, str]:
    """(file, source line, message) of where ``err`` was thrown.

    A DataLoader worker's error arrives re-raised by torch with the worker's traceback as text
    ("Caught ValueError in DataLoader worker process 0. Original Traceback ..."); its last frame
    and message are read from that text.
    """
    text = str(err)
    frames = list(_FRAME_LINE.finditer(text)) if "Original Traceback" in text else []
    if frames:
        lines = text[frames[-1].end():].splitlines()[1:]
        # after the source line come caret lines (indented), then "Type: message" unindented
        first = next((i for i, line in enumerate(lines[1:], 1) if line[:1].strip()), len(lines))
        message = "\n".join([lines[first].split(": ", 1)[-1], *lines[first + 1:]]) \
            if first < len(lines) else text
        return frames[-1]["file"], lines[0].strip() if lines else "", message
    tb = err.__traceback__
    if tb is None:
        return "", "", text
    while tb.tb_next is not None:
        tb = tb.tb_next
    filename = tb.tb_frame.f_code.co_filename
    return filename, linecache.getline(filename, tb.tb_lineno).strip(), text


# jsonargparse re-raises an error of a subclass-mode class's constructor (the finetuning data
# module) inside this message, with the original as its __cause__
UNION_WRAPPER = "Does not validate against any of the Union subtypes"


def _unwrap(err: BaseException) -> BaseException:
    """The error a constructor raised, out of jsonargparse's union wrapper."""
    while (isinstance(err, ValueError) and str(err).startswith(UNION_WRAPPER)
           and err.__cause__ is not None):
        err = err.__cause__
    return err


def user_error_message(err: BaseException) -> str | None:
    """What to print instead of a traceback when ``err`` is a user error, else None.

    User errors: ``UserError``; Lightning's ``MisconfigurationException``; a device
    out-of-memory error carrying ``OOM_HINT``; a missing / unreadable path (the OS names it);
    and a ``ValueError`` / ``OSError`` / ``ImportError`` / ``FloatingPointError`` thrown by an
    explicit ``raise`` in aukit or a stage package, whose messages are written for users. The
    same types thrown by torch, numpy or Python itself (a bad reshape, an unpacking error) are
    bugs and keep their traceback.
    """
    err = _unwrap(err)
    if isinstance(err, UserError | MisconfigurationException):
        return str(err)
    if isinstance(err, torch.OutOfMemoryError):
        return str(err) if OOM_HINT in str(err) else None
    filename, code, message = _origin(err)
    if isinstance(err, PATH_ERROR_TYPES):
        return message
    if isinstance(err, OWN_ERROR_TYPES) and code.startswith("raise") and _own_file(filename):
        return message
    return None


def report_user_error(err: BaseException, prog: str) -> None:
    """Exit with status 2 after printing ``prog: error: <message>`` when ``err`` is a user error
    (``user_error_message``); return otherwise, so that the caller re-raises it. With
    ``AUKIT_DEBUG=1`` it always returns: the traceback is shown.

    Entry points call it from ``except Exception as err: report_user_error(err, prog); raise``.
    """
    if os.environ.get(DEBUG_VARIABLE, "").strip().lower() not in ("", "0", "false", "no"):
        return
    message = user_error_message(err)
    if message is None:
        return
    print(f"{prog}: error: {message}\n(set {DEBUG_VARIABLE}=1 to see the traceback)",
          file=sys.stderr)
    raise SystemExit(2)


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
                         "-c trainer/cpu.yaml (TRAINER=cpu), or install a CUDA build of "
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


def newest_last_checkpoint(trainer: dict) -> str:
    """The newest ``last.ckpt`` of the runs the trainer's logger writes (``<save_dir>/<name>/
    version_*/checkpoints/``); a ``UserError`` naming the folder when there is none."""
    logger = trainer.get("logger")
    settings = getattr(logger, "init_args", None) or (logger.get("init_args", {})
                                                       if isinstance(logger, dict) else {})
    save_dir = settings.get("save_dir") or trainer.get("default_root_dir") or "."
    runs = Path(save_dir) / (settings.get("name") or "lightning_logs")
    found = sorted(runs.glob("version_*/checkpoints/last.ckpt"), key=lambda p: p.stat().st_mtime)
    if not found:
        raise UserError(f"--ckpt_path last: no last.ckpt under {runs}/version_*/checkpoints/; "
                        "give the checkpoint's path instead (--ckpt_path <path>/last.ckpt)")
    return str(found[-1])


def check_ckpt_path(path: str, stage: str) -> None:
    """Refuse a ``--ckpt_path`` file that is not a checkpoint of ``stage``, saying what it is and
    how to use it. Runs before LightningCLI parses the checkpoint's hyperparameters into the
    config, which fails on the other stage's with an unrelated parser error."""
    try:
        read_checkpoint(path, stage)
    except ValueError as err:
        if stage == "finetune" and " is a pretrain checkpoint" in str(err):
            raise UserError(
                f"--ckpt_path {path} is a stage-1 (pretrain) checkpoint: it holds the "
                "self-supervised encoder without AU heads, so finetuning cannot resume, "
                f"validate or test it. Start finetuning from it with `make finetune "
                f"PRETRAINED={path}` (--model.pretrained {path}, no --ckpt_path); --ckpt_path "
                f"takes {STAGE_HINT['finetune']}") from err
        if stage == "pretrain" and " is a finetune checkpoint" in str(err):
            raise UserError(
                f"--ckpt_path {path} is a stage-2 (finetune) checkpoint; pretraining resumes "
                f"from {STAGE_HINT['pretrain']}. Evaluate a finetune checkpoint with "
                f"`aukit-finetune test ... --ckpt_path {path}`") from err
        raise UserError(f"--ckpt_path {err}") from err


class ShippedConfigFile(ActionConfigFile):
    """``-c`` / ``--config``: a config file by its path, or a shipped one by its name under
    ``conf/`` (``-c trainer/cpu.yaml``) from any folder; see ``aukit.configs.resolve_config``."""

    def __call__(self, parser, cfg, values, option_string=None):
        try:
            values = resolve_config(values)
        except FileNotFoundError as err:
            raise TypeError(str(err)) from err  # jsonargparse prints it under the usage, exit 2
        super().__call__(parser, cfg, values, option_string)


class AUCLI(LightningCLI):
    """LightningCLI in subclass mode with the links both stages need.

    ``-c`` takes a config path or the name of a shipped config (``ShippedConfigFile``).
    The data module owns the image size; the model reads it from there so it is written once.
    ``performance:`` (channels-last, ``torch.compile``) is the ``aukit.performance.Performance``
    callback, always added.
    A device out-of-memory error is re-raised with the settings that fix it; a ``--ckpt_path``
    of the other stage is refused before anything is built (``check_ckpt_path``).
    """

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("save_config_kwargs", {"overwrite": True})
        kwargs.setdefault("seed_everything_default", 0)
        try:
            super().__init__(*args, **kwargs)
        except torch.OutOfMemoryError as err:
            raise torch.OutOfMemoryError(f"{err}\n{OOM_HINT}") from err

    def init_parser(self, **kwargs) -> LightningArgumentParser:
        # LightningCLI.init_parser with the config action that knows the shipped configs
        kwargs.setdefault("dump_header", [f"lightning.pytorch=={pl.__version__}"])
        # a misspelt flag (--trainer.max_step) is an error, not a prefix of another one
        kwargs.setdefault("allow_abbrev", False)
        parser = self.parser_class(**kwargs)
        parser.add_argument("-c", "--config", action=ShippedConfigFile,
                            help="a config file (yaml / json), or a shipped one by its name under "
                                 "conf/, e.g. trainer/cpu.yaml; repeat to compose")
        return parser

    def add_arguments_to_parser(self, parser) -> None:
        # in subclass mode (finetuning: a data module per source) the value is under init_args
        parser.link_arguments("data.init_args.image_size" if self.subclass_mode_data
                              else "data.image_size", "model.image_size")
        # always present, off unless a config or the command line sets `performance:`
        parser.add_lightning_class_args(Performance, "performance")

    def parse_arguments(self, parser, args) -> None:
        super().parse_arguments(parser, args)
        subcommand = self.config.get("subcommand")
        path = self.config[subcommand].get("ckpt_path") if subcommand else None
        stage = getattr(self.model_class, "stage", "")
        if path == "last" and subcommand == "fit":
            # Lightning looks only in this run's new version folder, where nothing is yet
            path = newest_last_checkpoint(self.config[subcommand].get("trainer", {}))
            self.config[subcommand]["ckpt_path"] = path
            print(f"--ckpt_path last: resuming from {path}", file=sys.stderr)
        # "best" / "hpc" are Lightning's names, resolved by the trainer
        if path and stage and Path(path).is_file():
            check_ckpt_path(str(path), stage)

    def before_instantiate_classes(self) -> None:
        config = self.config.get(self.subcommand, self.config) if self.subcommand else self.config
        trainer = config.get("trainer", {})
        check_trainer(str(trainer.get("accelerator", "auto")), trainer.get("devices"),
                      trainer.get("precision"))

    def after_fit(self) -> None:
        trainer = self.trainer
        if not trainer.is_global_zero:
            return
        best = next((c.best_model_path for c in trainer.checkpoint_callbacks
                     if not isinstance(c, LastCheckpoint) and c.best_model_path), "-")
        last = last_checkpoint_path(trainer) or "-"
        # fast_dev_run swaps the logger for one without a folder
        logs = (trainer.logger.log_dir if trainer.logger is not None else None) or "-"
        print(f"\nfinished: last checkpoint {last} | best {best} | TensorBoard logs {logs}"
              + (f" (tensorboard --logdir {Path(logs).parent})" if logs != "-" else ""))
