"""``aukit-finetune fit -c trainer/cpu.yaml -c finetune/hiva.yaml -c data/synthau.yaml -c
finetune/synthau.yaml``; also ``validate`` / ``test`` with ``--ckpt_path``. Runs from any folder:
``-c`` takes a config path or the name of a shipped config (``aukit.configs``)."""

import importlib

from jsonargparse import Namespace

from aukit.cli import AUCLI, UserError, report_user_error
from aukit.data.datamodules import AUDataModule, ManifestDataModule
from finetune.module import HiVAFinetuner


def _data_class(data: Namespace | dict) -> type | None:
    """The data module class a parsed ``data:`` entry selects (subclass mode), or None."""
    class_path = data.get("class_path") if data else None
    if not class_path:
        return None
    module, _, name = str(class_path).rpartition(".")
    return getattr(importlib.import_module(module), name, None) if module else None


class FinetuneCLI(AUCLI):
    """The data module is chosen per source in subclass mode (``data: class_path:
    aukit.data.BP4DDataModule``, or ``--data SynthAUDataModule``; its arguments stay
    ``--data.batch_size 8``). Adds the AU list link (the model predicts exactly the data
    module's AUs) and, after ``fit``, a test of the best-on-validation checkpoint on the
    held-out subjects. A manifest run that would reach a test without a test split is refused
    before anything is built."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("subclass_mode_data", True)
        super().__init__(*args, **kwargs)

    def add_arguments_to_parser(self, parser) -> None:
        super().add_arguments_to_parser(parser)
        parser.link_arguments("data.au_names", "model.aus", apply_on="instantiate")
        parser.add_argument("--test_after_fit", type=bool, default=True,
                            help="after fit, test the best-on-validation checkpoint")

    def before_instantiate_classes(self) -> None:
        super().before_instantiate_classes()
        if not self.subcommand:
            return
        config = self.config[self.subcommand]
        data = config.get("data") or {}
        source = _data_class(data)
        init_args = data.get("init_args") or {}
        tests = self.subcommand in ("test", "predict") or (
            self.subcommand == "fit" and config.get("test_after_fit", True))
        # SynthAU and the 3-fold protocol carve their own test split; a manifest needs one given
        if (tests and source is not None and issubclass(source, ManifestDataModule)
                and init_args.get("test_manifest") is None and init_args.get("fold") is None):
            when = ("the test after training (--test_after_fit true) would fail once training "
                    "has finished" if self.subcommand == "fit" else f"`{self.subcommand}` reads it")
            raise UserError(
                f"{source.__name__} has no test split: --data.test_manifest is not set, and "
                f"{when}. Give --data.test_manifest <test.csv> (BP4DDataModule / "
                "DISFADataModule: or --data.fold 1|2|3)"
                + (", or --test_after_fit false to train without testing"
                   if self.subcommand == "fit" else ""))

    def after_fit(self) -> None:
        super().after_fit()
        if self.config[self.subcommand].get("test_after_fit", True):
            best = getattr(self.trainer.checkpoint_callback, "best_model_path", "")
            self.trainer.test(self.model, datamodule=self.datamodule, ckpt_path=best or None)


PROG = "aukit-finetune"


def main(args: list[str] | None = None) -> None:
    """The ``aukit-finetune`` command (also ``python -m finetune``); ``args`` default to
    ``sys.argv[1:]``."""
    try:
        FinetuneCLI(HiVAFinetuner, AUDataModule, args=args, parser_kwargs={"prog": PROG})
    except Exception as err:
        report_user_error(err, PROG)
        raise
