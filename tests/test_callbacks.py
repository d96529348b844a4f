"""Stage 2's reporting callbacks: the test report files and the TensorBoard activation maps."""

import json
from pathlib import Path

import lightning as L
import pytest
from lightning.pytorch.loggers import TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from aukit.callbacks import ActivationMapLogger, TestReport
from aukit.data.datamodules import SynthAUDataModule
from finetune.module import HiVAFinetuner

AUS = ["AU1", "AU12"]


@pytest.fixture
def run(tmp_path):
    """A tiny untrained model, its data and a trainer with both callbacks and TensorBoard."""
    module = HiVAFinetuner(aus=AUS, image_size=64, encoder=dict(embed_dim=32),
                           heads=dict(use_text=False))
    data = SynthAUDataModule(image_size=64, batch_size=4, aus=AUS, num_workers=0,
                             synthau_samples_per_subject=1, synthau_eval_samples_per_subject=1)
    trainer = L.Trainer(accelerator="cpu", logger=TensorBoardLogger(tmp_path, name="ft"),
                        callbacks=[TestReport(), ActivationMapLogger(num_images=1)],
                        limit_val_batches=1, limit_test_batches=2, enable_progress_bar=False,
                        enable_model_summary=False)
    return module, data, trainer


def test_the_test_report_is_written_next_to_the_logs(run, caplog):
    caplog.set_level("INFO")
    module, data, trainer = run
    trainer.test(module, datamodule=data)
    folder = Path(trainer.logger.log_dir)
    report = json.loads((folder / "test_report.json").read_text())
    assert report["aus"] == AUS and report["architecture"] == "hiva"
    assert report["model"] == module.model_config
    assert report["metrics"] == module.metric_values["test"]
    csv = (folder / "test_report.csv").read_text().splitlines()
    assert csv[0] == "au,f1,precision,recall,accuracy,auc"
    assert [row.split(",")[0] for row in csv[1:]] == [*AUS, "mean"]
    assert "| AU12" in caplog.text  # the per-AU table, printed


def test_validation_logs_activation_maps_and_the_f1_table(run):
    module, data, trainer = run
    trainer.validate(module, datamodule=data)
    events = EventAccumulator(trainer.logger.log_dir)
    events.Reload()
    assert events.Tags()["images"] == ["val/activation_maps_0"]
    assert "val/f1_table/text_summary" in events.Tags()["tensors"]
