"""Plain baselines on SynthAU: how hard is the embedded data set?

Trains on the "train" subjects and reports per-AU F1 on the subject-disjoint "test" subjects for
(1) one logistic regression per AU on raw pixels, (2) a small CNN trained from scratch and (3) the
toolkit's smallest Swin (``swin_test`` + mean-pooled linear head) trained from scratch with the
same recipe, next to the "all positive" chance reference. Prints a Markdown section and, with
``--out``, writes it into that file under ``HEADING`` (replacing only that section).

    python scripts/synthau_baselines.py --out docs/benchmarks.md
"""

from __future__ import annotations

import argparse
import datetime
import os
import shlex
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import f1_score
from sklearn.preprocessing import StandardScaler
from torch import nn

from aukit.au import ALL_AUS, DATASET_AUS, au_keys
from aukit.data.synthau import SynthAU, split_subjects
from aukit.models.backbone import SwinBackbone
from aukit.utils.report import machine, write_section

HEADING = "## What do simple baselines score on SynthAU?"
LR_SIZE = 48


def make_split(dataset: SynthAU, split: str, per_subject: int, aus: tuple[int, ...],
               ) -> tuple[np.ndarray, np.ndarray]:
    """Images ``[B, H, W, 3]`` uint8 and labels ``[B, A]`` for ``per_subject`` samples each."""
    columns = [ALL_AUS.index(au) for au in aus]
    images, labels = [], []
    for subject in split_subjects(split):
        for index in range(per_subject):
            sample = dataset.sample(subject, index)
            images.append(sample["image"])
            labels.append(sample["labels"][columns])
    return np.stack(images), np.stack(labels)


def pixel_features(images: np.ndarray) -> np.ndarray:
    """Grayscale, ``LR_SIZE`` px, flattened: ``[B, H, W, 3]`` -> ``[B, LR_SIZE**2]``."""
    return np.stack([cv2.resize(cv2.cvtColor(im, cv2.COLOR_RGB2GRAY), (LR_SIZE, LR_SIZE),
                                interpolation=cv2.INTER_AREA).ravel() for im in images]
                    ).astype(np.float32)


def logistic_regression(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray,
                        ) -> np.ndarray:
    """One balanced logistic regression per AU on standardised pixels. Returns ``[B, A]`` 0/1."""
    scaler = StandardScaler().fit(pixel_features(train_x))
    xtr, xte = scaler.transform(pixel_features(train_x)), scaler.transform(pixel_features(test_x))
    predictions = []
    for a in range(train_y.shape[1]):
        # liblinear: same L2 objective as the default solver, faster on 2304 pixels
        model = LogisticRegression(class_weight="balanced", solver="liblinear", max_iter=2000)
        predictions.append(model.fit(xtr, train_y[:, a]).predict(xte))
    return np.stack(predictions, 1)


def small_cnn(num_aus: int, width: int = 16) -> nn.Module:
    """4 conv blocks (3x3 conv, batch norm, ReLU, 2x2 max pool), global average pool, linear."""
    layers: list[nn.Module] = []
    channels = [3, width, 2 * width, 4 * width, 8 * width]
    for c_in, c_out in zip(channels[:-1], channels[1:], strict=True):
        layers += [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out),
                   nn.ReLU(inplace=True), nn.MaxPool2d(2)]
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(channels[-1], num_aus))


class SwinLinear(nn.Module):
    """``swin_test`` tokens of its last stage, mean-pooled, then one linear layer."""

    def __init__(self, num_aus: int, image_size: int) -> None:
        super().__init__()
        self.backbone = SwinBackbone("swin_test", image_size)
        self.head = nn.Linear(self.backbone.out_dim, num_aus)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(images).mean(1))


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """``[B, H, W, 3]`` uint8 -> ``[B, 3, H, W]`` float in about -1..1."""
    return torch.from_numpy(images).permute(0, 3, 1, 2).float().div(127.5).sub(1)


def train_from_scratch(model: nn.Module, train_x: np.ndarray, train_y: np.ndarray,
                       test_x: np.ndarray, epochs: int, seed: int,
                       batch_size: int = 32) -> np.ndarray:
    """Train ``model`` (seeded before it is built) with BCE (pos_weight = negatives /
    positives) and horizontal flips (AU labels are side-agnostic). Returns test predictions
    ``[B, A]`` 0/1 at p = 0.5."""
    x, y = to_tensor(train_x), torch.from_numpy(train_y).float()
    positives = y.sum(0).clamp(min=1)
    loss_fn = nn.BCEWithLogitsLoss(pos_weight=(len(y) - positives) / positives)
    optimiser = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
    steps = epochs * -(-len(x) // batch_size)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, 2e-3, total_steps=steps)
    generator = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(epochs):
        for batch in torch.randperm(len(x), generator=generator).split(batch_size):
            xb = x[batch]
            flip = torch.rand(len(batch), generator=generator) < 0.5
            xb = torch.where(flip[:, None, None, None], xb.flip(-1), xb)
            loss = loss_fn(model(xb), y[batch])
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            schedule.step()
    model.eval()
    with torch.no_grad():
        logits = torch.cat([model(xb) for xb in to_tensor(test_x).split(256)])
    return (logits > 0).numpy().astype(np.uint8)


def per_au_f1(labels: np.ndarray, predictions: np.ndarray) -> np.ndarray:
    """``[B, A]`` labels and predictions -> ``[A]`` F1 (0 where an AU is never predicted)."""
    return np.array([f1_score(labels[:, a], predictions[:, a], zero_division=0)
                     for a in range(labels.shape[1])])


def markdown(keys: list[str], rates: np.ndarray, columns: dict[str, np.ndarray],
             notes: list[str]) -> str:
    """The section: a per-AU table (F1 in %), then the notes."""
    header = "| AU | base rate (test) | " + " | ".join(columns) + " |"
    rows = [header, "|" + "---|" * (len(columns) + 2)]
    for a, key in enumerate(keys):
        cells = " | ".join(f"{values[a] * 100:.1f}" for values in columns.values())
        rows.append(f"| {key} | {rates[a] * 100:.1f}% | {cells} |")
    means = " | ".join(f"**{values.mean() * 100:.1f}**" for values in columns.values())
    rows.append(f"| **mean** | {rates.mean() * 100:.1f}% | {means} |")
    return "\n".join([HEADING, "", *notes, "", *rows, ""])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--train-per-subject", type=int, default=60)
    parser.add_argument("--test-per-subject", type=int, default=50)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cnn-size", type=int, default=64,
                        help="input size of the CNN and the Swin (swin_test: 64 or 128)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--out", type=Path, help="Markdown file to write the section into")
    args = parser.parse_args(argv)
    if min(args.train_per_subject, args.test_per_subject, args.epochs) < 1:
        parser.error("--train-per-subject, --test-per-subject and --epochs must be >= 1")
    torch.set_num_threads(args.threads)
    load = os.getloadavg()[0]  # the machine may be shared: say how busy it was
    aus = DATASET_AUS["synthau"]
    dataset = SynthAU(args.seed, image_size=args.cnn_size)

    start = time.perf_counter()
    train_x, train_y = make_split(dataset, "train", args.train_per_subject, aus)
    test_x, test_y = make_split(dataset, "test", args.test_per_subject, aus)
    data_s = time.perf_counter() - start
    start = time.perf_counter()
    lr_f1 = per_au_f1(test_y, logistic_regression(train_x, train_y, test_x))
    lr_s = time.perf_counter() - start
    start = time.perf_counter()
    torch.manual_seed(args.seed)
    cnn_f1 = per_au_f1(test_y, train_from_scratch(small_cnn(len(aus)), train_x, train_y, test_x,
                                                  args.epochs, args.seed))
    cnn_s = time.perf_counter() - start
    start = time.perf_counter()
    torch.manual_seed(args.seed)
    swin_f1 = per_au_f1(test_y, train_from_scratch(SwinLinear(len(aus), args.cnn_size), train_x,
                                                   train_y, test_x, args.epochs, args.seed))
    swin_s = time.perf_counter() - start
    chance_f1 = per_au_f1(test_y, np.ones_like(test_y))

    command = "python " + " ".join(shlex.quote(a) for a in [sys.argv[0], *(argv or sys.argv[1:])])
    notes = [
        f"Command: `{command}`  ",
        f"Machine: {machine()}, "
        f"load average {load:.1f} at start (wall times grow with it); "
        f"{datetime.date.today().isoformat()}  ",
        f"Data: seed {args.seed}; train = {len(train_x)} samples of {len(split_subjects('train'))} "
        f"subjects, test = {len(test_x)} samples of {len(split_subjects('test'))} unseen subjects; "
        f"AU set `synthau` (present: intensity >= 2). Train base rates (%): "
        + ", ".join(f"{k} {r * 100:.0f}" for k, r in zip(au_keys(aus), train_y.mean(0),
                                                          strict=True)) + ".  ",
        f"Wall time: data {data_s:.0f} s, logistic regression {lr_s:.0f} s, "
        f"CNN {cnn_s:.0f} s, Swin {swin_s:.0f} s.  ",
        f"F1 (%) on the test subjects at threshold 0.5. *All positive*: predict every AU "
        f"everywhere (chance reference). *LogReg pixels*: one `LogisticRegression("
        f"class_weight='balanced', solver='liblinear')` per AU on standardised "
        f"{LR_SIZE}x{LR_SIZE} grayscale pixels. *Small CNN*: 4 conv blocks (16-128 channels), "
        f"{args.cnn_size} px RGB, "
        f"{args.epochs} epochs AdamW + one-cycle, BCE with pos_weight, horizontal flips. "
        f"*swin_test scratch*: the toolkit's smallest Swin (`SwinBackbone('swin_test')`, "
        f"mean-pooled tokens, linear head) with the same data and recipe.",
    ]
    section = markdown(au_keys(aus), test_y.mean(0), {
        "all positive F1": chance_f1, "LogReg pixels F1": lr_f1, "small CNN F1": cnn_f1,
        "swin_test scratch F1": swin_f1}, notes)
    print(section)
    if args.out:
        write_section(args.out, HEADING, section)
        print(f"wrote section {HEADING!r} to {args.out}")


if __name__ == "__main__":
    main()
