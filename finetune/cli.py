"""``aukit-finetune fit -c trainer/cpu.yaml -c finetune/synthau.yaml``; also ``validate`` /
``test`` with ``--ckpt_path``. Runs from any folder: ``-c`` takes a config path or the name of a
shipped config (``aukit.configs``)."""

from aukit.cli import AUCLI, UserError, report_user_error
from aukit.data.datamodules import AUDataModule
from finetune.module import HiVAFinetuner


class FinetuneCLI(AUCLI):
    """Adds the AU list link (the model predicts exactly the data module's AUs) and, after
    ``fit``, a test of the best-on-validation checkpoint on the held-out subjects. A manifest
    run that would reach a test without a test split is refused before anything is built."""

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
        data = data.get("init_args") or data  # subclass mode: class_path + init_args
        tests = self.subcommand in ("test", "predict") or (
            self.subcommand == "fit" and config.get("test_after_fit", True))
        # SynthAU and the 3-fold protocol carve their own test split; a manifest needs one given
        if (tests and str(data.get("dataset", "synthau")).lower() != "synthau"
                and data.get("test_manifest") is None and data.get("fold") is None):
            when = ("the test after training (--test_after_fit true) would fail once training "
                    "has finished" if self.subcommand == "fit" else f"`{self.subcommand}` reads it")
            raise UserError(
                f"--data.dataset {data.get('dataset')} has no test split: --data.test_manifest is "
                f"not set, and {when}. Give --data.test_manifest <test.csv> (bp4d / disfa: or "
                "--data.fold 1|2|3)"
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
