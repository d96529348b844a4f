"""The AU-detector base: per-split metrics logged and kept, and data with other AUs refused."""

from types import SimpleNamespace

import pytest
import torch

from aukit.detection import AUDetectionModule
from aukit.metrics import AUMetrics


class Detector(AUDetectionModule):
    stage = "finetune"

    def __init__(self):
        super().__init__()
        self.au_names = ["AU1", "AU2"]
        self.init_metrics(self.au_names)
        self.logged = {}

    def forward(self, images, landmarks):
        return {"logits": images.flatten(1)[:, :2]}

    def log_dict(self, values, **kwargs):
        self.logged.update(values)


def _batch(logits, labels):
    return {"image": torch.tensor(logits, dtype=torch.float), "landmarks": None,
            "labels": torch.tensor(labels), "label_mask": torch.ones(len(labels), 2,
                                                                     dtype=torch.bool)}


def test_a_split_is_computed_logged_kept_and_reset():
    module = Detector()
    batch = _batch([[5.0, -5.0], [-5.0, 5.0], [5.0, 5.0]], [[1, 0], [0, 1], [1, 0]])
    module.validation_step(batch, 0)
    reference = AUMetrics(["AU1", "AU2"])
    reference.update(batch["image"].sigmoid(), batch["labels"], batch["label_mask"])
    values = module.log_split("val")
    assert values == pytest.approx({k: float(v) for k, v in reference.compute().items()})
    assert module.metric_values["val"] == values
    assert module.logged["val/f1_mean"] == values["f1_mean"]
    assert module.metrics["val"].update_count == 0  # reset for the next epoch
    module.update_metrics("fit", batch["image"], batch)
    module.on_train_epoch_end()  # the training batches are logged as train/
    assert module.logged["train/f1_AU1"] == values["f1_AU1"]


def test_data_with_other_aus_is_refused():
    module = Detector()
    module.trainer = SimpleNamespace(datamodule=SimpleNamespace(au_names=["AU1", "AU4"]))
    with pytest.raises(ValueError, match=r"predicts \['AU1', 'AU2'\] but the data has"):
        module.setup("fit")
