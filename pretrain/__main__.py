"""``python -m pretrain fit -c conf/trainer/cpu.yaml -c conf/pretrain/synthau.yaml``."""

from aukit.cli import AUCLI, report_user_error
from aukit.data.datamodules import UnlabeledFaceDataModule
from pretrain.module import RegionRelationPretrainer


def main() -> None:
    try:
        AUCLI(RegionRelationPretrainer, UnlabeledFaceDataModule)
    except Exception as err:
        report_user_error(err, "python -m pretrain")
        raise


if __name__ == "__main__":
    main()
