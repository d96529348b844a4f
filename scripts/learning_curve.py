"""Train vs test F1 per epoch of a plain supervised baseline on SynthAU, in a bare torch loop.

A quick diagnosis tool (no Lightning, no checkpoints): does a backbone / image size / stem find
AU cues that transfer to unseen identities, or does it memorise its training identities? Trains
the region baseline (``RegionAUClassifier``) or the linear baseline on the 30 labelled subjects
and prints, every epoch, the training loss, F1 on the augmented training batches and F1 on the
20 test subjects.

    python scripts/learning_curve.py --image-size 128 --epochs 15
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from aukit.data.datamodules import SynthAUDataModule
from aukit.data.transforms import normalize_images
from aukit.losses.au_bce import au_bce_loss
from aukit.metrics import AUMetrics
from aukit.models.linear import LinearAUClassifier, RegionAUClassifier
from aukit.optim import warmup_cosine


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--architecture", choices=("region", "linear"), default="region")
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--feature-stage", type=int, default=3)
    parser.add_argument("--conv-stem", type=int, choices=(0, 1), default=1)
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--weight-decay", type=float, default=0.05)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--samples-per-subject", type=int, default=60)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cache", default="runs/cache/synthau", help="rendered-face cache")
    args = parser.parse_args(argv)
    torch.manual_seed(args.seed)
    data = SynthAUDataModule(image_size=args.image_size, batch_size=args.batch_size,
                             num_workers=2, synthau_samples_per_subject=args.samples_per_subject,
                             synthau_eval_samples_per_subject=20, synthau_cache=args.cache,
                             seed=args.seed)
    data.setup("fit")
    build = RegionAUClassifier if args.architecture == "region" else LinearAUClassifier
    model = build(data.aus, "swin_test", args.image_size, feature_stage=args.feature_stage,
                  conv_stem=bool(args.conv_stem))
    train = data.train_dataloader()
    test = data.split_dataloader("test")
    pos_weight = data.train_label_statistics().positive_weights
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    schedule = warmup_cosine(optimizer, len(train), args.epochs * len(train))
    started = time.time()
    for epoch in range(args.epochs):
        train.sampler.set_epoch(epoch)
        seen, losses = AUMetrics(data.au_names), []
        model.train()
        for batch in train:
            logits = model(normalize_images(batch["image"]), batch["landmarks"])["logits"]
            loss = au_bce_loss(logits, batch["labels"], batch["label_mask"], None, pos_weight)
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
            optimizer.step()
            schedule.step()
            seen.update(logits.detach().sigmoid(), batch["labels"], batch["label_mask"])
            losses.append(loss.item())
        print(f"epoch {epoch} loss {np.mean(losses):.3f} train F1 "
              f"{100 * float(seen.compute()['f1_mean']):.1f} test F1 "
              f"{100 * evaluate(model, test, data.au_names):.1f} "
              f"({time.time() - started:.0f} s)", flush=True)


@torch.no_grad()
def evaluate(model: torch.nn.Module, loader, au_names: list[str]) -> float:
    metric = AUMetrics(au_names)
    model.eval()
    for batch in loader:
        logits = model(normalize_images(batch["image"]), batch["landmarks"])["logits"]
        metric.update(logits.sigmoid(), batch["labels"], batch["label_mask"])
    return float(metric.compute()["f1_mean"])


if __name__ == "__main__":
    main()
