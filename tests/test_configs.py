"""Every LightningCLI YAML under conf/ builds (run=False): pretraining with each trainer preset,
finetuning as each data set's composition (trainer, finetune/base.yaml, data/<set>.yaml,
finetune/<set>.yaml) with the values it always had; ``-c`` finds the shipped configs by name
from any folder."""

from pathlib import Path

import pytest

from aukit.cli import AUCLI
from aukit.configs import CONFIG_DIR, config_flags, finetune_configs
from aukit.data.datamodules import AUDataModule, SynthAUDataModule, UnlabeledFaceDataModule
from finetune.cli import FinetuneCLI
from finetune.module import HiVAFinetuner
from pretrain.module import RegionRelationPretrainer

CONF = CONFIG_DIR  # the shipped conf/ (aukit.configs)
TRAINERS = sorted((CONF / "trainer").glob("*.yaml"))
DATASETS = ["synthau", "bp4d", "disfa", "csv"]  # make finetune DATASET=...
# data sets that need files on disk get a stand-in manifest
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


def _finetune_args(dataset: str, tmp_path: Path, trainer: str = "trainer/cpu.yaml") -> list[str]:
    """What `make finetune DATASET=<dataset>` composes, with a stand-in manifest where the data
    set needs one on disk."""
    from aukit.au import DATASET_AUS

    args = config_flags([trainer, *finetune_configs(dataset)])
    if dataset in NEEDS_DATA:
        aus = [f"AU{n}" for n in DATASET_AUS.get(dataset, DATASET_AUS["bp4d"])]
        args += ["--data.manifest", str(_manifest(tmp_path, aus)), "--data.val_subjects", "[S2]"]
        if dataset != "csv":
            args += ["--data.fold", "null"]  # the stand-in has none of the fold-list subjects
    return args


def test_every_finetune_config_is_part_of_a_dataset_composition():
    used = {c for d in DATASETS for c in finetune_configs(d)}
    shipped = {f"{p.parent.name}/{p.name}" for folder in ("finetune", "data")
               for p in (CONF / folder).glob("*.yaml")}
    assert shipped == used


# the values each composed config builds with (today's configs, one value written once)
EXPECTED = {
    "synthau": ("SynthAUDataModule", "finetune", 18, None, 128, 128),
    "bp4d": ("BP4DDataModule", "finetune-bp4d", 20, "swin_base", 256, 224),
    "disfa": ("DISFADataModule", "finetune-disfa", 20, "swin_base", 256, 224),
    "csv": ("ManifestDataModule", "finetune-csv", 20, "swin_tiny", 256, 224),
}


@pytest.mark.parametrize("dataset", DATASETS)
def test_each_datasets_composed_finetune_config_builds(dataset, tmp_path):
    cli = FinetuneCLI(HiVAFinetuner, AUDataModule, run=False,
                      args=_finetune_args(dataset, tmp_path))
    data, model = cli.datamodule, cli.model
    assert cli.model.au_names == list(data.au_names)
    assert model.hparams.image_size == data.image_size
    assert (type(data).__name__, cli.trainer.logger.name, cli.trainer.max_epochs,
            model.hparams.encoder["backbone"], model.hparams.encoder["embed_dim"],
            data.image_size) == EXPECTED[dataset]
    callbacks = {type(c).__name__ for c in cli.trainer.callbacks}
    assert {"ModelCheckpoint", "LearningRateMonitor", "TestReport", "ActivationMapLogger",
            "Performance"} <= callbacks
    assert not cli.config.performance.compile and not cli.config.performance.channels_last


@pytest.mark.parametrize("trainer", TRAINERS, ids=lambda p: p.stem)
def test_finetune_builds_with_each_trainer_preset(trainer, tmp_path):
    cli = FinetuneCLI(HiVAFinetuner, AUDataModule, run=False,
                      args=[*_finetune_args("synthau", tmp_path, str(trainer)),
                            "--trainer.accelerator", "cpu", "--trainer.devices", "1",
                            "--trainer.strategy", "auto", "--trainer.precision", "32-true",
                            "--trainer.num_nodes", "1", "--data.image_size", "64",
                            "--model.heads.use_text", "false"])
    assert cli.trainer.max_epochs == 18 and cli.datamodule.image_size == 64


def test_the_data_module_is_chosen_by_class_and_keeps_short_overrides(tmp_path):
    tiny = ["--data.image_size", "64", "--model.heads.use_text", "false",
            "--model.encoder.backbone", "swin_test"]
    base = config_flags(["trainer/cpu.yaml", "finetune/base.yaml"])
    for choice in (["--data", "SynthAUDataModule"], ["--data", "aukit.data.SynthAUDataModule"]):
        cli = FinetuneCLI(HiVAFinetuner, AUDataModule, run=False,
                          args=[*base, *choice, "--data.batch_size", "8",
                                "--data.init_args.num_workers", "1", *tiny])
        assert isinstance(cli.datamodule, SynthAUDataModule)
        assert (cli.datamodule.batch_size, cli.datamodule.num_workers) == (8, 1)
    short = tmp_path / "short.yaml"
    short.write_text("data:\n  class_path: SynthAUDataModule\n  init_args:\n    fold: 2\n")
    cli = FinetuneCLI(HiVAFinetuner, AUDataModule, run=False, args=[*base, "-c", str(short), *tiny])
    assert isinstance(cli.datamodule, SynthAUDataModule) and cli.datamodule.fold == 2
    with pytest.raises(SystemExit):  # a CSV manifest has no fold lists
        FinetuneCLI(HiVAFinetuner, AUDataModule, run=False,
                    args=[*base, "--data", "ManifestDataModule", "--data.fold", "1", *tiny])


def test_shipped_configs_are_found_by_name_from_any_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no conf/ here
    tiny = ["--data.image_size", "64", "--model.heads.use_text", "false"]
    composed = finetune_configs("synthau")
    for prefix in ("", "conf/"):
        names = [f"{prefix}trainer/cpu.yaml", *(prefix + c for c in composed)]
        cli = FinetuneCLI(HiVAFinetuner, AUDataModule, run=False,
                          args=[*config_flags(names), *tiny])
        assert [str(p) for p in cli.config.config] == [
            str(CONF / "trainer" / "cpu.yaml"), *(str(CONF / c) for c in composed)]
    # a file of that name here wins over the shipped one
    (tmp_path / "trainer").mkdir()
    (tmp_path / "trainer" / "cpu.yaml").write_text("trainer:\n  max_epochs: 7\n")
    cli = FinetuneCLI(HiVAFinetuner, AUDataModule, run=False,
                      args=[*config_flags([*composed, "trainer/cpu.yaml"]), *tiny])
    assert str(cli.config.config[-1]) == "trainer/cpu.yaml" and cli.trainer.max_epochs == 7


def test_an_unknown_config_names_the_shipped_ones(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        AUCLI(RegionRelationPretrainer, UnlabeledFaceDataModule, run=False,
              args=["-c", "trainer/tpu.yaml"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2
    assert "config trainer/tpu.yaml does not exist here" in err and "trainer/cpu.yaml" in err
