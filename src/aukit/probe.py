"""Frozen-feature linear probe: how much AU information do the AU region features hold?"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import lightning as L
import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_only
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler
from torch import Tensor
from torch.utils.data import DataLoader

from aukit.au import parse_au
from aukit.data.transforms import normalize_images
from aukit.metrics import AUMetrics

log = logging.getLogger(__name__)
Encoder = Callable[[Tensor, Tensor], Tensor]  # (images [B,3,H,W], landmarks [B,68,2]) -> [B,A,E]


@torch.no_grad()
def extract_au_features(encode: Encoder, loader: DataLoader,
                        device: torch.device | str = "cpu") -> dict[str, np.ndarray]:
    """Run ``encode`` over a labelled loader -> features [N, A, E], labels and mask [N, A']."""
    features, labels, masks = [], [], []
    for batch in loader:
        images = normalize_images(batch["image"].to(device, non_blocking=True))
        out = encode(images, batch["landmarks"].to(device))
        features.append(out.float().cpu().numpy())
        if not np.isfinite(features[-1]).all():
            raise FloatingPointError("the encoder produced non-finite features: its weights hold "
                                     "NaN/inf (did training diverge?); probe an earlier checkpoint")
        labels.append(batch["labels"].numpy())
        masks.append(batch["label_mask"].numpy())
    return {"features": np.concatenate(features), "labels": np.concatenate(labels),
            "mask": np.concatenate(masks)}


def probe_f1(train: dict[str, np.ndarray], evaluation: dict[str, np.ndarray],
             feature_index: Sequence[int], au_names: Sequence[str],
             max_iter: int = 300) -> dict[str, float]:
    """Fit one logistic regression per AU on that AU's region feature; F1 on ``evaluation``.

    ``feature_index[k]`` is the row of the feature tensor that holds label column k's AU.
    """
    probs = np.zeros_like(evaluation["labels"], dtype=np.float32)
    for k, row in enumerate(feature_index):
        known = train["mask"][:, k].astype(bool)
        x, y = train["features"][known, row], train["labels"][known, k]
        if len(np.unique(y)) < 2:
            log.warning("probe: %s has a single class in the probe training split; "
                        "predicting that class", au_names[k])
            probs[:, k] = float(y[0]) if len(y) else 0.0
            continue
        scaler = StandardScaler().fit(x)
        clf = LogisticRegression(max_iter=max_iter, class_weight="balanced")
        clf.fit(scaler.transform(x), y)
        probs[:, k] = clf.predict_proba(scaler.transform(evaluation["features"][:, row]))[:, 1]
    # the probe runs on rank 0 alone: a cross-rank sync would wait forever for the others
    metric = AUMetrics(list(au_names), sync_on_compute=False)
    metric.update(torch.from_numpy(probs), torch.from_numpy(evaluation["labels"]),
                  torch.from_numpy(evaluation["mask"]).bool())
    return {k: float(v) for k, v in metric.compute().items() if k.startswith("f1_")}


def run_probe(encode: Encoder, encoder_aus: Sequence[int], datamodule, eval_split: str = "val",
              device: torch.device | str = "cpu") -> dict[str, float]:
    """Probe ``encode`` on a labelled AUDataModule: fit on its train split, score ``eval_split``."""
    au_names = list(datamodule.au_names)
    missing = [n for n in au_names if parse_au(n) not in encoder_aus]
    if missing:
        raise ValueError(f"the probe data has {missing}, which the encoder does not model; "
                         "pretrain with --model.aus all or probe fewer AUs")
    feature_index = [list(encoder_aus).index(parse_au(n)) for n in au_names]
    datamodule.prepare_data()  # e.g. SynthAU's detected landmarks, found once and cached
    datamodule.setup("fit")
    if eval_split == "test":
        datamodule.setup("test")
    train = extract_au_features(encode, datamodule.split_dataloader("train"), device)
    evaluation = extract_au_features(encode, datamodule.split_dataloader(eval_split), device)
    return probe_f1(train, evaluation, feature_index, au_names)


class LinearProbe(L.Callback):
    """Every ``every_n_epochs`` epochs and at the end of fitting, log ``probe/f1_mean``.

    Needs a module with ``encode(images, landmarks) -> [B, A, E]`` and ``au_numbers``, and a
    datamodule with ``probe_datamodule()``. Runs on global rank 0 only.
    """

    def __init__(self, every_n_epochs: int = 0, eval_split: str = "val"):
        self.every_n_epochs = every_n_epochs
        self.eval_split = eval_split
        self.last: dict[str, float] = {}

    @rank_zero_only
    def _probe(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        was_training = module.training
        module.eval()
        self.last = run_probe(module.encode, module.au_numbers,
                              trainer.datamodule.probe_datamodule(), self.eval_split,
                              module.device)
        module.train(was_training)
        if trainer.logger is not None:
            trainer.logger.log_metrics({f"probe/{k}": v for k, v in self.last.items()},
                                       step=trainer.global_step)
        print(f"linear probe ({self.eval_split}) after epoch {trainer.current_epoch}: "
              f"mean F1 {100 * self.last['f1_mean']:.1f}")

    def on_train_epoch_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        last_epoch = trainer.current_epoch + 1 >= (trainer.max_epochs or 0)
        if self.every_n_epochs and (trainer.current_epoch + 1) % self.every_n_epochs == 0 \
                and not last_epoch:
            self._probe(trainer, module)

    def on_fit_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self._probe(trainer, module)
