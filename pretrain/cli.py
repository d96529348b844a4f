"""``aukit-pretrain fit -c trainer/cpu.yaml -c pretrain/synthau.yaml``. Runs from any folder:
``-c`` takes a config path or the name of a shipped config (``aukit.configs``)."""

from aukit.cli import AUCLI, report_user_error
from aukit.data.datamodules import UnlabeledFaceDataModule
from pretrain.module import RegionRelationPretrainer

PROG = "aukit-pretrain"


def main(args: list[str] | None = None) -> None:
    """The ``aukit-pretrain`` command (also ``python -m pretrain``); ``args`` default to
    ``sys.argv[1:]``."""
    try:
        AUCLI(RegionRelationPretrainer, UnlabeledFaceDataModule, args=args,
              parser_kwargs={"prog": PROG})
    except Exception as err:
        report_user_error(err, PROG)
        raise
