"""Every LightningCLI YAML under conf/ builds (run=False), alone and with each trainer preset;
``-c`` finds the shipped configs by name from any folder."""

from pathlib import Path

import pytest

from aukit.cli import AUCLI
from aukit.configs import CONFIG_DIR
from aukit.data.datamodules import AUDataModule, UnlabeledFaceDataModule
from finetune.cli import FinetuneCLI
from finetune.module import HiVAFinetuner
from pretrain.module import RegionRelationPretrainer

CONF = CONFIG_DIR  # the shipped conf/ (aukit.configs)
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


def test_shipped_configs_are_found_by_name_from_any_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no conf/ here
    tiny = ["--data.image_size", "64", "--model.use_text", "false"]
    for trainer, stage in (("trainer/cpu.yaml", "finetune/synthau.yaml"),
                           ("conf/trainer/cpu.yaml", "conf/finetune/synthau.yaml")):
        cli = FinetuneCLI(HiVAFinetuner, AUDataModule, run=False,
                          args=["-c", trainer, "-c", stage, *tiny])
        assert [str(p) for p in cli.config.config] == [str(CONF / "trainer" / "cpu.yaml"),
                                                        str(CONF / "finetune" / "synthau.yaml")]
    # a file of that name here wins over the shipped one
    (tmp_path / "trainer").mkdir()
    (tmp_path / "trainer" / "cpu.yaml").write_text("trainer:\n  max_epochs: 7\n")
    cli = FinetuneCLI(HiVAFinetuner, AUDataModule, run=False,
                      args=["-c", "finetune/synthau.yaml", "-c", "trainer/cpu.yaml", *tiny])
    assert str(cli.config.config[1]) == "trainer/cpu.yaml" and cli.trainer.max_epochs == 7


def test_an_unknown_config_names_the_shipped_ones(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        AUCLI(RegionRelationPretrainer, UnlabeledFaceDataModule, run=False,
              args=["-c", "trainer/tpu.yaml"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2
    assert "config trainer/tpu.yaml does not exist here" in err and "trainer/cpu.yaml" in err
