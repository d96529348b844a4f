"""Representation quality of stage 1: linear-probe mean F1 on SynthAU after pretraining.

For each seed: a randomly initialised encoder (no training), raw pixels around each AU, and the
pretraining variants of ``VARIANTS`` (region loss only, relation loss only, both, on person-aware
batches with clip positives; both on random batches; both with two augmentations of one image as
the positive pair; masked-pixel prediction alone and next
to both; masked pixels + expression geometry; the default recipe as it is and without each of
its region and relation losses), each trained with the same budget
through the real CLI (``conf/pretrain/synthau.yaml``), then probed: one logistic regression per
AU on its frozen AU region feature, fitted on the SynthAU train subjects and scored on the test
subjects (nothing is tuned on them). Every face comes with the landmarks the toolkit's landmark
stage finds on it (the data modules' default; ``--landmarks exact`` for an oracle run
with the renderer's). Writes ``## What does stage 1 learn? Linear probe`` into ``--out``, the
figures into ``--json``, and keeps each variant's final checkpoint in ``--ckpt-dir`` (the
finetune benchmark starts from them).

    python scripts/bench_pretrain.py --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import lightning as L
import torch
from torch import Tensor

from aukit.au import ALL_AUS
from aukit.cli import AUCLI
from aukit.data.datamodules import SynthAUDataModule, UnlabeledFaceDataModule
from aukit.models.region import landmark_maps, roi_tokens
from aukit.probe import run_probe
from aukit.utils.report import benchmark_section, mean_sd, update_json, write_section
from pretrain.module import RegionRelationPretrainer

HEADING = "## What does stage 1 learn? Linear probe"
RANDOM_INIT = "random init (no pretraining)"
PIXELS = "raw grey pixels around each AU (no encoder)"
DEFAULT = "the default recipe (conf/pretrain/synthau.yaml)"
ORACLE = " [oracle: the renderer's exact landmarks]"  # the suffix of oracle rows
# the contrastive recipe (conf/pretrain/synthau.yaml's default is masked pixels + geometry):
# region + relation losses on two frames of a clip, person-aware batches of 8 people x 4 faces
CONTRASTIVE = ["--model.losses.masked_weight", "0", "--model.encoder.geometry", "false",
               "--model.losses.geometry_weight", "0", "--model.losses.region_weight", "1",
               "--model.losses.relation_weight", "1", "--data.views", "2",
               "--data.positives", "clip", "--data.faces_per_subject", "4"]
# name -> (checkpoint folder tag, overrides)
VARIANTS: dict[str, tuple[str, list[str]]] = {
    "region only": ("region", [*CONTRASTIVE, "--model.losses.relation_weight", "0"]),
    "relation only": ("relation", [*CONTRASTIVE, "--model.losses.region_weight", "0"]),
    "region + relation": ("both", CONTRASTIVE),
    "region + relation, random batches": ("both-random", [*CONTRASTIVE,
                                                          "--data.faces_per_subject", "0"]),
    "region + relation, one-image positives": ("both-augment", [*CONTRASTIVE,
                                                                "--data.positives", "augment"]),
    "masked pixels only": ("masked", [
        "--model.losses.region_weight", "0", "--model.losses.relation_weight", "0",
        "--model.encoder.geometry", "false", "--model.losses.geometry_weight", "0",
        "--data.views", "1", "--data.positives", "augment", "--data.faces_per_subject", "4"]),
    "region + relation + masked pixels": ("both-masked", [*CONTRASTIVE,
                                                          "--model.losses.masked_weight", "1"]),
    "masked pixels + expression geometry": ("masked-geometry", [
        "--model.losses.region_weight", "0", "--model.losses.relation_weight", "0",
        "--model.losses.masked_weight", "1", "--model.encoder.geometry", "true",
        "--model.losses.geometry_weight", "1", "--data.views", "1",
        "--data.positives", "augment", "--data.faces_per_subject", "8"]),
    # conf/pretrain/synthau.yaml as it is, and without each of the seed method's two losses
    DEFAULT: ("default", []),
    DEFAULT + ", without the relation loss": ("default-no-relation",
                                             ["--model.losses.relation_weight", "0"]),
    DEFAULT + ", without the region loss": ("default-no-region", ["--model.losses.region_weight",
                                                                  "0"]),
    DEFAULT + ", same-person negatives": ("default-person", ["--model.losses.negatives", "person"]),
}


def untrained(seed: int, args: argparse.Namespace) -> RegionRelationPretrainer:
    """The encoder the pretraining config builds (overrides included), before any step."""
    return AUCLI(RegionRelationPretrainer, UnlabeledFaceDataModule, run=False, args=[
        "-c", f"conf/trainer/{args.trainer}.yaml", "-c", "conf/pretrain/synthau.yaml",
        "--seed_everything", str(seed), "--trainer.logger", "false",
        "--data.image_size", str(args.image_size), "--data.synthau_cache", args.cache,
        *args.overrides]).model


class PixelWindows:
    """The reference a stage-1 encoder must approach: a 12 x 12 window of grey pixels of the face
    downsampled to 64 x 64, 20% of the face wide, around each AU's landmark-defined centre; no
    learned weights."""

    au_numbers = ALL_AUS
    grid, size, extent = 64, 12, 0.2

    def encode(self, images: Tensor, landmarks: Tensor) -> Tensor:
        grey = torch.nn.functional.adaptive_avg_pool2d(images.mean(1, keepdim=True), self.grid)
        maps = landmark_maps(landmarks, images, (self.grid, self.grid), self.au_numbers, 0.3)
        weights = maps / maps.sum(-1, keepdim=True)
        return roi_tokens(grey.flatten(2).transpose(1, 2), weights, self.size, self.extent)


def pretrain(variant: str, seed: int, args: argparse.Namespace) -> RegionRelationPretrainer:
    tag, overrides = VARIANTS[variant]
    folder = Path(args.ckpt_dir) / f"{tag}-seed{seed}"
    cli = AUCLI(RegionRelationPretrainer, UnlabeledFaceDataModule, args=[
        "fit", "-c", f"conf/trainer/{args.trainer}.yaml", "-c", "conf/pretrain/synthau.yaml",
        "--seed_everything", str(seed), "--trainer.max_epochs", str(args.epochs),
        "--trainer.callbacks", "[]", "--trainer.logger", "false",
        "--trainer.enable_checkpointing", "false", "--trainer.enable_progress_bar", "false",
        "--trainer.default_root_dir", str(folder),
        "--data.num_workers", str(args.workers), "--data.image_size", str(args.image_size),
        "--data.synthau_cache", args.cache, "--data.landmarks", args.landmarks, *overrides,
        *args.overrides])
    cli.trainer.save_checkpoint(folder / "last.ckpt")
    return cli.model


def probe(module: RegionRelationPretrainer | PixelWindows, args: argparse.Namespace) -> float:
    data = SynthAUDataModule(image_size=args.image_size, batch_size=64,
                             num_workers=args.workers,
                             synthau_samples_per_subject=args.probe_samples,
                             synthau_eval_samples_per_subject=args.probe_samples,
                             synthau_cache=args.cache, landmarks=args.landmarks)
    return 100 * run_probe(module.encode, module.au_numbers, data, "test")["f1_mean"]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--probe-samples", type=int, default=20)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--variants", nargs="+", default=[PIXELS, RANDOM_INIT, *VARIANTS],
                        choices=[PIXELS, RANDOM_INIT, *VARIANTS])
    parser.add_argument("--cache", default="runs/cache/synthau", help="rendered-face cache")
    parser.add_argument("--landmarks", default="auto", choices=["auto", "exact"],
                        help="the landmarks every face comes with: those the landmark stage "
                             "finds (auto), or the renderer's (exact: oracle rows, kept apart)")
    parser.add_argument("--ckpt-dir", default="runs/bench/pretrain")
    parser.add_argument("--trainer", default="cpu", help="preset under conf/trainer (gpu: bf16)")
    parser.add_argument("--out", default="docs/benchmarks.md")
    parser.add_argument("--json", default="docs/results/synthau_benchmark.json",
                        help="results file; every probe is added at once, so processes running "
                             "other --variants side by side fill one table")
    parser.add_argument("overrides", nargs="*", help="extra LightningCLI overrides (after --)")
    args = parser.parse_args(argv)
    key = "" if args.trainer == "cpu" else f"_{args.trainer}"
    argv = argv if argv is not None else sys.argv[1:]
    for seed in args.seeds:
        for variant in args.variants:
            started = time.time()
            L.seed_everything(seed)
            module = (PixelWindows() if variant == PIXELS else untrained(seed, args)
                      if variant == RANDOM_INIT else pretrain(variant, seed, args))
            result = {"f1": probe(module, args), "minutes": round((time.time() - started) / 60, 2)}
            name = variant + (ORACLE if args.landmarks == "exact" else "")
            print(f"{name} | seed {seed}: probe F1 {result['f1']:.1f}", flush=True)
            data = update_json(args.json, {f"runs{key}": {"probe": {name: {str(seed): result}}}})
            write_report(data[f"runs{key}"]["probe"], args, argv, key)


def write_report(runs: dict, args: argparse.Namespace, argv: list[str], key: str) -> None:
    """The probe table of every run in the results file so far."""
    variants = [v + o for o in ("", ORACLE) for v in [PIXELS, RANDOM_INIT, *VARIANTS]
                if v + o in runs]
    scores = {v: [runs[v][s]["f1"] for s in sorted(runs[v], key=int)] for v in variants}
    minutes = sum(r["minutes"] for v in variants for r in runs[v].values())
    rows = ["| encoder | probe mean F1 (%), mean ± sd (per seed) |", "|---|---:|"]
    rows += [f"| {name} | {mean_sd(values)} |" for name, values in scores.items()]
    # a run on another preset (a GPU budget) gets its own section beside the CPU one
    heading = HEADING + ("" if args.trainer == "cpu" else f" ({args.trainer})")
    text = benchmark_section(
        heading, "scripts/bench_pretrain.py", argv, time.time() - 60 * minutes,
        f"Linear probe (one logistic regression per AU on its frozen AU region feature) on "
        f"SynthAU's 12 AUs: fitted on the train subjects ({args.probe_samples} faces each), "
        f"mean F1 on the unseen test subjects. Each pretraining variant: "
        f"`conf/pretrain/synthau.yaml` (swin_test with conv stem, {args.image_size} px, 17 AU "
        f"regions, the unlabeled pool of identities disjoint from the labelled ones, batches of "
        f"subjects x faces unless 'random batches', relation loss = fused Gromov-Wasserstein), "
        f"{args.epochs} epochs; the random-init row probes the same architecture untrained; "
        f"the raw-pixel row probes 12 x 12 grey-pixel windows around each AU (no encoder, the "
        f"reference a pretrained encoder should approach). "
        f"Wall time is the sum of the runs' own times.", "\n".join(rows))
    if args.out:
        write_section(args.out, heading, text)
    if args.json:
        update_json(args.json, {
            f"probe{key}": scores,
            "budget": {f"pretrain{key}": {"epochs": args.epochs, "image_size": args.image_size,
                                          "cpu_minutes_of_runs": round(minutes, 1)}},
            "command": {f"pretrain{key}": "python scripts/bench_pretrain.py " + " ".join(argv)}})

if __name__ == "__main__":
    main()
