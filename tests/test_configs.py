"""Every LightningCLI YAML under conf/ builds (run=False), alone and with each trainer preset."""

from pathlib import Path

import pytest

from aukit.cli import AUCLI
from aukit.data.datamodules import AUDataModule, UnlabeledFaceDataModule
from finetune.__main__ import FinetuneCLI
from finetune.module import HiVAFinetuner
from pretrain.module import RegionRelationPretrainer

CONF = Path(__file__).resolve().parents[1] / "conf"
TRAINERS = sorted((CONF / "trainer").glob("*.yaml"))
# stage configs that need a dataset on disk get a stand-in manifest
NEEDS_DATA = {"bp4d", "disfa", "csv"}


def _manifest(tmp_path: Path, aus: list[str]) -> Path:
    import cv2
    import numpy as np

    rows = ["image,subject," + ",".join(aus)]
    for i in range(6):
        cv2.imwrite(str(tmp_path / f"{i}.png"), np.full((64, 64, 3), 100, np.uint8))
        rows.append(f"{i}.png,S{i % 3}," + ",".join(str((i + k) % 2) for k in range(len(aus))))
    path = tmp_path / "manifest.csv"
    path.write_text("\n".join(rows) + "\n")
    return path


@pytest.mark.parametrize("trainer", TRAINERS, ids=lambda p: p.stem)
@pytest.mark.parametrize("stage", sorted((CONF / "pretrain").glob("*.yaml")), ids=lambda p: p.stem)
def test_pretrain_configs_build(stage, trainer):
    cli = AUCLI(RegionRelationPretrainer, UnlabeledFaceDataModule, run=False,
                args=["-c", str(trainer), "-c", str(stage), "--trainer.accelerator", "cpu",
                      "--trainer.devices", "1", "--trainer.strategy", "auto",
                      "--trainer.precision", "32-true", "--trainer.num_nodes", "1"])
    assert cli.model.hparams.image_size == cli.datamodule.image_size


@pytest.mark.parametrize("stage", sorted((CONF / "finetune").glob("*.yaml")), ids=lambda p: p.stem)
def test_finetune_configs_build(stage, tmp_path):
    from aukit.au import DATASET_AUS

    args = ["-c", str(CONF / "trainer" / "cpu.yaml"), "-c", str(stage)]
    if stage.stem in NEEDS_DATA:
        aus = [f"AU{n}" for n in DATASET_AUS.get(stage.stem, DATASET_AUS["bp4d"])]
        args += ["--data.dataset", "csv", "--data.manifest", str(_manifest(tmp_path, aus)),
                 "--data.data_root", "null", "--data.fold", "null",
                 "--data.val_subjects", "[S2]"]
    cli = FinetuneCLI(HiVAFinetuner, AUDataModule, run=False, args=args)
    assert cli.model.au_names == list(cli.datamodule.au_names)
    assert cli.model.hparams.image_size == cli.datamodule.hparams.image_size
