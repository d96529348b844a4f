"""``python -m finetune fit -c conf/trainer/cpu.yaml -c conf/finetune/synthau.yaml``; also
``validate`` / ``test`` with ``--ckpt_path``."""

from aukit.cli import AUCLI
from aukit.data.datamodules import AUDataModule
from finetune.module import HiVAFinetuner


class FinetuneCLI(AUCLI):
    """Adds the AU list link (the model predicts exactly the data module's AUs) and, after
    ``fit``, a test of the best-on-validation checkpoint on the held-out subjects."""

    def add_arguments_to_parser(self, parser) -> None:
        super().add_arguments_to_parser(parser)
        parser.link_arguments("data.au_names", "model.aus", apply_on="instantiate")
        parser.add_argument("--test_after_fit", type=bool, default=True,
                            help="after fit, test the best-on-validation checkpoint")

    def after_fit(self) -> None:
        super().after_fit()
        if self.config[self.subcommand].get("test_after_fit", True):
            best = getattr(self.trainer.checkpoint_callback, "best_model_path", "")
            self.trainer.test(self.model, datamodule=self.datamodule, ckpt_path=best or None)


def main() -> None:
    FinetuneCLI(HiVAFinetuner, AUDataModule)


if __name__ == "__main__":
    main()
