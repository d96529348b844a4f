"""Stage 2 on SynthAU: does HiVA beat plain region features, and does stage 1 help?

Every condition trains through the real CLI (``conf/finetune/synthau.yaml``) with the same
number of optimisation steps, selects its checkpoint on the validation subjects only, and is
scored on the unseen test subjects (mean F1 over SynthAU's 12 AUs). Conditions: (a) Swin +
linear head, (a2) Swin + AU region features + one linear head per AU, (b) HiVA, all from
scratch; (c) HiVA from the stage-1 checkpoint of ``scripts/bench_pretrain.py``; (d) (c) without
the graph / DDCA / CDCA / text, and (c) from a stage 1 trained without the relation loss; each
with all and with ``--fractions`` of the labelled training subjects. For (b) and (c) the
activation maps are scored against SynthAU's AU regions (``aukit.map_quality``). Writes
``## Finetuning: HiVA`` into ``--out`` and the figures into ``--json``.

    python scripts/bench_finetune.py --seeds 0 1 2 --seeds-ablations 0
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from pathlib import Path

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from aukit.data.datamodules import AUDataModule
from aukit.map_quality import evaluate_maps
from aukit.utils.report import benchmark_section, mean_sd, update_json, write_section
from finetune.__main__ import FinetuneCLI
from finetune.module import HiVAFinetuner

HEADING = "## Finetuning: HiVA"
NO_RELATION = "(d) (c) from a stage 1 without the relation loss"
CONDITIONS: dict[str, list[str]] = {
    "(a) Swin + linear head, scratch": ["--model.architecture", "linear"],
    "(a2) Swin + AU regions + per-AU linear heads, scratch": ["--model.architecture", "region"],
    "(b) HiVA, scratch": [],
    "(c) HiVA, stage-1 init": ["STAGE1"],
    "(d) (c) without graph": ["STAGE1", "--model.use_graph", "false"],
    "(d) (c) without DDCA": ["STAGE1", "--model.use_ddca", "false"],
    "(d) (c) without CDCA": ["STAGE1", "--model.use_cdca", "false"],
    "(d) (c) without text": ["STAGE1", "--model.use_text", "false"],
    NO_RELATION: ["STAGE1_NO_RELATION"],
}
MAPPED = ("(b)", "(c)")  # conditions whose activation maps are scored
TRAIN_SUBJECTS = 30  # SynthAU's labelled train split


def curves(log_dir: str) -> dict[str, list[float]]:
    """Train and validation mean F1 (%) per epoch from a run's TensorBoard events."""
    events = EventAccumulator(log_dir)
    events.Reload()
    tags = events.Tags()["scalars"]
    return {split: [round(100 * e.value, 1) for e in events.Scalars(f"{split}/f1_mean")]
            for split in ("train", "val") if f"{split}/f1_mean" in tags}


def run(condition: str, fraction: float, seed: int, args: argparse.Namespace) -> dict:
    overrides = []
    for item in CONDITIONS[condition]:
        if item.startswith("STAGE1"):
            path = args.stage1_no_relation if item == "STAGE1_NO_RELATION" else args.stage1
            overrides += ["--model.pretrained", path.format(seed=seed)]
        else:
            overrides.append(item)
    # the same number of steps for every fraction; validate about once per full-data epoch
    steps_per_epoch = max(1, math.ceil(TRAIN_SUBJECTS * fraction) * args.samples_per_subject
                          // args.batch_size)
    full_epoch = TRAIN_SUBJECTS * args.samples_per_subject // args.batch_size
    cli = FinetuneCLI(HiVAFinetuner, AUDataModule, args=[
        "fit", "-c", f"conf/trainer/{args.trainer}.yaml", "-c", "conf/finetune/synthau.yaml",
        "--seed_everything", str(seed), "--trainer.max_epochs", "-1",
        "--trainer.max_steps", str(args.steps),
        "--trainer.check_val_every_n_epoch", str(max(1, round(full_epoch / steps_per_epoch))),
        "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
        "--trainer.logger.init_args.save_dir", args.log_dir,
        "--trainer.logger.init_args.name", f"{condition[:4].strip('() ')}-f{fraction}-s{seed}",
        "--data.label_fraction", str(fraction), "--data.batch_size", str(args.batch_size),
        "--data.synthau_samples_per_subject", str(args.samples_per_subject),
        "--data.synthau_eval_samples_per_subject", str(args.eval_samples),
        "--data.num_workers", str(args.workers), "--data.image_size", str(args.image_size),
        "--data.synthau_cache", args.cache, *overrides, *args.overrides])
    result = {"f1": 100 * float(cli.trainer.callback_metrics["test/f1_mean"]),
              "curves": curves(cli.trainer.logger.log_dir)}
    if condition.startswith(MAPPED):  # the best-on-validation weights, on the test subjects
        result["maps"] = evaluate_maps(cli.model, cli.datamodule.test_dataloader())
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--seeds-ablations", type=int, nargs="+", default=[0],
                        help="seeds for the (d) ablations")
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--fractions", type=float, nargs="+", default=[1.0, 0.1])
    parser.add_argument("--conditions", nargs="+", default=list(CONDITIONS))
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--samples-per-subject", type=int, default=60)
    parser.add_argument("--eval-samples", type=int, default=20)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--cache", default="runs/cache/synthau", help="rendered-face cache")
    parser.add_argument("--stage1", default="runs/bench/pretrain/both-seed{seed}/last.ckpt")
    parser.add_argument("--stage1-no-relation",
                        default="runs/bench/pretrain/region-seed{seed}/last.ckpt")
    parser.add_argument("--log-dir", default="runs/bench/finetune")
    parser.add_argument("--trainer", default="cpu", help="preset under conf/trainer (gpu: bf16)")
    parser.add_argument("--out", default="docs/benchmarks.md")
    parser.add_argument("--json", default="docs/results/synthau_benchmark.json")
    parser.add_argument("overrides", nargs="*", help="extra LightningCLI overrides (after --)")
    args = parser.parse_args(argv)
    needed = [p for c in args.conditions for p in CONDITIONS[c] if p.startswith("STAGE1")]
    paths = {"STAGE1": args.stage1, "STAGE1_NO_RELATION": args.stage1_no_relation}
    missing = sorted({paths[p].format(seed=s) for p in needed for s in args.seeds
                      if not Path(paths[p].format(seed=s)).is_file()})
    if missing:
        sys.exit(f"no stage-1 checkpoints {missing}; run scripts/bench_pretrain.py first")
    started = time.time()
    # a run on another preset (a GPU budget) gets its own section beside the CPU one
    heading = HEADING + ("" if args.trainer == "cpu" else f" ({args.trainer})")
    results: dict[tuple[str, float], list[dict]] = {
        (c, f): [] for c in args.conditions for f in args.fractions}
    for seed in args.seeds:
        for fraction in args.fractions:
            for condition in args.conditions:
                if condition.startswith("(d)") and seed not in args.seeds_ablations:
                    continue
                results[condition, fraction].append(run(condition, fraction, seed, args))
                print(f"{condition} | labels {fraction:.0%} | seed {seed}: "
                      f"{results[condition, fraction][-1]['f1']:.1f}", flush=True)
    write_report(results, args, argv if argv is not None else sys.argv[1:], started, heading)


def write_report(results: dict[tuple[str, float], list[dict]], args: argparse.Namespace,
                 argv: list[str], started: float, heading: str) -> None:
    fractions = args.fractions
    header = "| condition | " + " | ".join(f"{f:.0%} labelled subjects" for f in fractions)
    rows = [header + " |", "|---|" + "---:|" * len(fractions)]
    scores = {c: {str(f): [r["f1"] for r in results[c, f]] for f in fractions}
              for c in args.conditions}
    for condition in args.conditions:
        rows.append(f"| {condition} | " + " | ".join(
            mean_sd(scores[condition][str(f)]) for f in fractions) + " |")
    maps = {c: {str(f): _mean_maps([r["maps"] for r in results[c, f]]) for f in fractions}
            for c in args.conditions if c.startswith(MAPPED)}
    map_rows = ["| condition | labels | mass in AU region / uniform | pointing game | "
                "map distinctness (regions: upper bound) |", "|---|---:|---:|---:|---:|"]
    for condition, by_fraction in maps.items():
        for fraction, m in by_fraction.items():
            map_rows.append(f"| {condition} | {float(fraction):.0%} | {m['mass_ratio_mean']:.2f} "
                            f"| {m['pointing_mean']:.2f} | {m['map_distinctness']:.2f} "
                            f"({m['region_distinctness']:.2f}) |")
    minutes = (time.time() - started) / 60
    budget = {"steps": args.steps, "batch_size": args.batch_size, "image_size": args.image_size,
              "samples_per_subject": args.samples_per_subject, "seeds": args.seeds,
              "seeds_ablations": args.seeds_ablations, "wall_minutes": round(minutes, 1)}
    text = benchmark_section(
        heading, "scripts/bench_finetune.py", argv, started,
        f"Test-subject mean F1 (%) on SynthAU's 12 AUs, mean ± sd over seeds {args.seeds} "
        f"((d): {args.seeds_ablations}; per-seed values in brackets); best-on-validation "
        f"checkpoint, {args.steps} steps of batch {args.batch_size} for every condition, "
        f"swin_test (conv stem) at {args.image_size} px, {args.samples_per_subject} faces per "
        f"training subject. Stage-1 checkpoints: `{args.stage1}` (both losses) and "
        f"`{args.stage1_no_relation}` (region loss only).",
        "\n".join(rows) + "\n\nActivation maps on the test subjects (best checkpoint; mean over "
        "AUs and seeds): the map's mass inside the AU's landmark region relative to a uniform "
        "map (1 = uniform, >= 2 wanted), the share of faces whose map peaks inside the region, "
        "and how different the AUs' maps of one face are (total variation; 0 = all alike).\n\n"
        + "\n".join(map_rows))
    print(text)
    if args.out:
        write_section(args.out, heading, text)
    if args.json:
        seed0 = {c: {str(f): results[c, f][0]["curves"] for f in fractions if results[c, f]}
                 for c in args.conditions}
        key = "" if args.trainer == "cpu" else f"_{args.trainer}"
        update_json(args.json, {f"finetune{key}": scores, f"maps{key}": maps,
                                f"curves{key}": seed0, "budget": {f"finetune{key}": budget},
                                "command": {f"finetune{key}": "python scripts/bench_finetune.py "
                                            + " ".join(argv)}})


def _mean_maps(values: list[dict[str, float]]) -> dict[str, float]:
    return {k: statistics.mean(v[k] for v in values) for k in values[0]} if values else {}


if __name__ == "__main__":
    main()
