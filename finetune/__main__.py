"""``python -m finetune fit -c conf/trainer/cpu.yaml -c conf/finetune/synthau.yaml``; also
``validate`` / ``test`` with ``--ckpt_path``."""

from aukit.cli import AUCLI
from aukit.data.datamodules import AUDataModule
from finetune.module import HiVAFinetuner


class FinetuneCLI(AUCLI):
    """Adds the AU list link: the model predicts exactly the data module's AUs."""

    def add_arguments_to_parser(self, parser) -> None:
        super().add_arguments_to_parser(parser)
        parser.link_arguments("data.au_names", "model.aus", apply_on="instantiate")


def main() -> None:
    FinetuneCLI(HiVAFinetuner, AUDataModule)


if __name__ == "__main__":
    main()
