"""How right are a finetuned model's pseudo-labels on SynthAU's unlabeled pool?

SynthAU renders the pool's labels, so the labels a mean teacher would give (``p >= threshold``
present, ``p <= 1 - threshold`` absent) can be scored. Reads a finetune checkpoint; with a mean
teacher inside (``--model.pseudo_label_weight``) it scores the teacher as well.

    python scripts/pseudo_label_quality.py runs/finetune/version_0/checkpoints/last.ckpt
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from sklearn.metrics import f1_score

from aukit.checkpoint import META_KEY
from aukit.data.datamodules import synthau_cache_dir
from aukit.data.datasets import SynthAUDataset
from aukit.data.synthau import unlabeled_subjects
from aukit.data.transforms import eval_transform
from aukit.inference import predictor_from_checkpoint, read_finetune_checkpoint


def scores(probs: np.ndarray, labels: np.ndarray, threshold: float) -> dict[str, float]:
    """Pool F1 (%) and what the confident decisions would teach: probs, labels [N, A]."""
    present, sure_present, sure_absent = labels > 0.5, probs >= threshold, probs <= 1 - threshold
    sure = sure_present | sure_absent
    return {
        "pool_f1": 100 * float(np.mean([f1_score(present[:, k], probs[:, k] >= 0.5,
                                                 zero_division=0)
                                        for k in range(labels.shape[1])])),
        "sure_share": float(sure.mean()),
        "sure_accuracy": float(((probs >= 0.5) == present)[sure].mean()),
        "sure_present_precision": float(present[sure_present].mean()),
        "present_labelled_sure_absent": float(sure_absent[present].mean()),
        "present_labelled_sure_present": float(sure_present[present].mean()),
        "base_rate": float(present.mean()),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("checkpoint")
    parser.add_argument("--threshold", type=float, default=0.9)
    parser.add_argument("--subjects", type=int, default=300)
    parser.add_argument("--faces", type=int, default=8, help="faces per pool subject")
    parser.add_argument("--cache", default="auto", help="rendered-face cache")
    args = parser.parse_args(argv)
    checkpoint = read_finetune_checkpoint(args.checkpoint)
    predictor = predictor_from_checkpoint(checkpoint)
    pool = SynthAUDataset(unlabeled_subjects(args.subjects), args.faces,
                          checkpoint[META_KEY]["aus"], eval_transform(predictor.image_size),
                          cache_dir=synthau_cache_dir(args.cache))
    loader = torch.utils.data.DataLoader(pool, batch_size=64)
    teacher = {k.removeprefix("teacher.model."): v for k, v in checkpoint["state_dict"].items()
               if k.startswith("teacher.model.")}
    for name in ["model", "teacher"] if teacher else ["model"]:
        if name == "teacher":
            predictor.model.load_state_dict(teacher)
        with torch.no_grad():
            batches = [(predictor(b["image"], b["landmarks"])[0], b["labels"]) for b in loader]
        probs, labels = (torch.cat(t).numpy() for t in zip(*batches, strict=True))
        values = scores(probs, labels, args.threshold)
        print(f"{name}: " + ", ".join(f"{k} {v:.3f}" for k, v in values.items()))


if __name__ == "__main__":
    main()
