"""``python -m pretrain fit -c conf/trainer/cpu.yaml -c conf/pretrain/synthau.yaml``."""

from aukit.cli import AUCLI
from aukit.data.datamodules import UnlabeledFaceDataModule
from pretrain.module import RegionRelationPretrainer


def main() -> None:
    AUCLI(RegionRelationPretrainer, UnlabeledFaceDataModule)


if __name__ == "__main__":
    main()
