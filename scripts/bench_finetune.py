"""Stage 2 on SynthAU: does HiVA beat plain region features, and does stage 1 help?

Every condition trains through the real CLI (the configs of ``make finetune``:
``finetune/base.yaml``, ``data/synthau.yaml``, ``finetune/synthau.yaml``) with the same
number of optimisation steps, selects its checkpoint on the validation subjects only, and is
scored on the unseen test subjects (mean F1 over SynthAU's 12 AUs). Conditions: (a) Swin +
linear head, (a2) Swin + AU region features + one linear head per AU, (b) HiVA, all from
scratch; (c) HiVA from the stage-1 checkpoint of ``scripts/bench_pretrain.py``; (d) (c) without
the graph / DDCA / CDCA / text, and (c) from a stage 1 trained without the relation or the
region loss; each with all and with ``--fractions`` of the labelled training subjects. Every
face comes with the landmarks the toolkit's landmark stage finds on it; the oracle rows (b) and
(c) read the renderer's exact landmarks instead, stage 1 included (``bench_pretrain.py
--landmarks exact``): ceilings, never headlines. For (b) and (c) the
activation maps are scored against SynthAU's AU regions (``aukit.map_quality``). Writes
``## Does stage 1 help finetuning? The full table`` into ``--out`` and the figures into ``--json``.

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

from aukit.configs import config_flags, finetune_configs
from aukit.data.datamodules import AUDataModule
from aukit.map_quality import evaluate_maps
from aukit.utils.report import benchmark_section, mean_sd, update_json, write_section
from finetune.cli import FinetuneCLI
from finetune.module import HiVAFinetuner

HEADING = "## Does stage 1 help finetuning? The full table"
NO_RELATION = "(d) (c) from a stage 1 without the relation loss"
NO_REGION = "(d) (c) from a stage 1 without the region loss"
ORACLE = " [oracle: the renderer's exact landmarks]"  # the suffix of oracle rows
CONDITIONS: dict[str, list[str]] = {
    "(a) Swin + linear head, scratch": ["--model.architecture", "linear"],
    "(a2) Swin + AU regions + per-AU linear heads, scratch": ["--model.architecture", "region"],
    "(b) HiVA, scratch": [],
    "(c) HiVA, stage-1 init": ["STAGE1"],
    "(d) (c) without graph": ["STAGE1", "--model.heads.use_graph", "false"],
    "(d) (c) without DDCA": ["STAGE1", "--model.heads.use_ddca", "false"],
    "(d) (c) without CDCA": ["STAGE1", "--model.heads.use_cdca", "false"],
    "(d) (c) without text": ["STAGE1", "--model.heads.use_text", "false"],
    NO_RELATION: ["STAGE1_NO_RELATION"],
    NO_REGION: ["STAGE1_NO_REGION"],
    # ceilings: the renderer's landmarks in every split (stage 1 pretrained on them too)
    "(b) HiVA, scratch" + ORACLE: ["EXACT"],
    "(c) HiVA, stage-1 init" + ORACLE: ["STAGE1_EXACT", "EXACT"],
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


def slug(condition: str) -> str:
    """A run-folder name for ``condition``, e.g. ``b-oracle``."""
    return condition[:4].strip("() ") + ("-oracle" if condition.endswith(ORACLE) else "")


def stage1_paths(args: argparse.Namespace) -> dict[str, str]:
    """The stage-1 checkpoint (a ``{seed}`` pattern) of each STAGE1 token."""
    return {"STAGE1": args.stage1, "STAGE1_NO_RELATION": args.stage1_no_relation,
            "STAGE1_NO_REGION": args.stage1_no_region, "STAGE1_EXACT": args.stage1_exact}


def run(condition: str, fraction: float, seed: int, args: argparse.Namespace) -> dict:
    overrides = []
    for item in CONDITIONS[condition]:
        if item == "EXACT":
            overrides += ["--data.landmarks", "exact"]
        elif item.startswith("STAGE1"):
            overrides += ["--model.pretrained", stage1_paths(args)[item].format(seed=seed)]
        else:
            overrides.append(item)
    # the same number of steps for every fraction; validate about once per full-data epoch
    steps_per_epoch = max(1, math.ceil(TRAIN_SUBJECTS * fraction) * args.samples_per_subject
                          // args.batch_size)
    full_epoch = TRAIN_SUBJECTS * args.samples_per_subject // args.batch_size
    started = time.time()
    cli = FinetuneCLI(HiVAFinetuner, AUDataModule, args=[
        "fit", "-c", f"trainer/{args.trainer}.yaml",
        *config_flags(finetune_configs("synthau")),
        "--seed_everything", str(seed), "--trainer.max_epochs", "-1",
        "--trainer.max_steps", str(args.steps),
        "--trainer.check_val_every_n_epoch", str(max(1, round(full_epoch / steps_per_epoch))),
        "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
        "--trainer.logger.init_args.save_dir", args.log_dir,
        "--trainer.logger.init_args.name", f"{slug(condition)}-f{fraction}-s{seed}",
        "--data.label_fraction", str(fraction), "--data.batch_size", str(args.batch_size),
        "--data.synthau_samples_per_subject", str(args.samples_per_subject),
        "--data.synthau_eval_samples_per_subject", str(args.eval_samples),
        "--data.num_workers", str(args.workers), "--data.image_size", str(args.image_size),
        "--data.synthau_cache", args.cache, *overrides, *args.overrides])
    result = {"f1": 100 * float(cli.trainer.callback_metrics["test/f1_mean"]),
              "curves": curves(cli.trainer.logger.log_dir)}
    if condition.startswith(MAPPED):  # the best-on-validation weights, on the test subjects
        result["maps"] = evaluate_maps(cli.model, cli.datamodule.test_dataloader())
    result["minutes"] = round((time.time() - started) / 60, 2)
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--seeds-ablations", type=int, nargs="+", default=[0],
                        help="seeds for the (d) ablations")
    parser.add_argument("--steps", type=int, default=800)
    parser.add_argument("--fractions", type=float, nargs="+", default=[1.0, 0.1])
    parser.add_argument("--conditions", nargs="+", choices=list(CONDITIONS),
                        default=list(CONDITIONS))
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--samples-per-subject", type=int, default=60)
    parser.add_argument("--eval-samples", type=int, default=20)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--cache", default="runs/cache/synthau", help="rendered-face cache")
    parser.add_argument("--stage1", default="runs/bench/pretrain/default-seed{seed}/last.ckpt",
                        help="stage-1 checkpoints of (c) and (d): bench_pretrain.py's default")
    parser.add_argument("--stage1-no-relation",
                        default="runs/bench/pretrain/default-no-relation-seed{seed}/last.ckpt")
    parser.add_argument("--stage1-no-region",
                        default="runs/bench/pretrain/default-no-region-seed{seed}/last.ckpt")
    parser.add_argument("--stage1-exact",
                        default="runs/bench-exact/pretrain/default-seed{seed}/last.ckpt",
                        help="the oracle (c)'s stage 1: bench_pretrain.py --landmarks exact")
    parser.add_argument("--log-dir", default="runs/bench/finetune")
    parser.add_argument("--trainer", default="cpu", help="preset under conf/trainer (gpu: bf16)")
    parser.add_argument("--out", default="docs/benchmarks.md")
    parser.add_argument("--json", default="docs/results/synthau_benchmark.json",
                        help="results file; every finished run is added at once, so processes "
                             "running other --conditions side by side fill one table")
    parser.add_argument("overrides", nargs="*", help="extra LightningCLI overrides (after --)")
    args = parser.parse_args(argv)
    needed = [p for c in args.conditions for p in CONDITIONS[c] if p.startswith("STAGE1")]
    paths = stage1_paths(args)
    missing = sorted({paths[p].format(seed=s) for p in needed for s in args.seeds
                      if not Path(paths[p].format(seed=s)).is_file()})
    if missing:
        sys.exit(f"no stage-1 checkpoints {missing}; run scripts/bench_pretrain.py first")
    key = "" if args.trainer == "cpu" else f"_{args.trainer}"
    argv = argv if argv is not None else sys.argv[1:]
    for seed in args.seeds:
        for fraction in args.fractions:
            for condition in args.conditions:
                if condition.startswith("(d)") and seed not in args.seeds_ablations:
                    continue
                result = run(condition, fraction, seed, args)
                print(f"{condition} | labels {fraction:.0%} | seed {seed}: {result['f1']:.1f}",
                      flush=True)
                data = update_json(args.json, {f"runs{key}": {"finetune": {
                    condition: {str(fraction): {str(seed): result}}}}})
                write_report(data[f"runs{key}"]["finetune"], args, argv, key)


def write_report(runs: dict, args: argparse.Namespace, argv: list[str], key: str) -> None:
    """The table, map scores and curves of every run in the results file so far."""
    conditions = [c for c in CONDITIONS if c in runs]
    fractions = sorted({f for c in conditions for f in runs[c]}, key=float, reverse=True)

    def seeds(c: str, f: str) -> list[dict]:
        return [runs[c][f][s] for s in sorted(runs[c].get(f, {}), key=int)]

    scores = {c: {f: [r["f1"] for r in seeds(c, f)] for f in fractions} for c in conditions}
    rows = ["| condition | " + " | ".join(f"{float(f):.0%} labelled subjects" for f in fractions)
            + " |", "|---|" + "---:|" * len(fractions)]
    rows += [f"| {c} | " + " | ".join(mean_sd(scores[c][f]) if scores[c][f] else "not run"
                                      for f in fractions) + " |" for c in conditions]
    maps = {c: {f: _mean_maps([r["maps"] for r in seeds(c, f) if "maps" in r]) for f in fractions}
            for c in conditions if c.startswith(MAPPED)}
    map_rows = ["| condition | labels | mass in AU region / uniform | pointing game | "
                "map distinctness (regions: upper bound) |", "|---|---:|---:|---:|---:|"]
    map_rows += [f"| {c} | {float(f):.0%} | {m['mass_ratio_mean']:.2f} | {m['pointing_mean']:.2f}"
                 f" | {m['map_distinctness']:.2f} ({m['region_distinctness']:.2f}) |"
                 for c, by_fraction in maps.items() for f, m in by_fraction.items() if m]
    curve_rows = ["| condition | labels | train F1 per validation | val F1 per validation |",
                  "|---|---:|---|---|"]
    curve_rows += [f"| {c} | {float(f):.0%} | {', '.join(map(str, r['curves'].get('train', [])))}"
                   f" | {', '.join(map(str, r['curves'].get('val', [])))} |"
                   for c in conditions for f in fractions for r in seeds(c, f)[:1]]
    minutes = sum(r["minutes"] for c in conditions for f in fractions for r in seeds(c, f))
    budget = {"steps": args.steps, "batch_size": args.batch_size, "image_size": args.image_size,
              "samples_per_subject": args.samples_per_subject,
              "cpu_minutes_of_runs": round(minutes, 1)}
    heading = HEADING + ("" if args.trainer == "cpu" else f" ({args.trainer})")
    text = benchmark_section(
        heading, "scripts/bench_finetune.py", argv, time.time() - 60 * minutes,
        f"Test-subject mean F1 (%) on SynthAU's 12 AUs, mean ± sd over seeds (per-seed values "
        f"in brackets); best-on-validation checkpoint, {args.steps} steps of batch "
        f"{args.batch_size} for every condition, swin_test (conv stem) at {args.image_size} px, "
        f"{args.samples_per_subject} faces per training subject. Stage-1 checkpoints: "
        f"`{args.stage1}` ((c), (d)) and `{args.stage1_no_relation}` (stage 1 without the "
        f"relation loss). "
        f"Wall time is the sum of the runs' own times.",
        "\n".join(rows) + "\n\nActivation maps on the test subjects (best checkpoint; mean "
        "over AUs and seeds): the map's mass inside the AU's landmark region relative to a "
        "uniform map (1 = uniform, >= 2 wanted), the share of faces whose map peaks inside the "
        "region, and how different the AUs' maps of one face are (total variation; 0 = all "
        "alike).\n\n" + "\n".join(map_rows) + "\n\nLearning curves of the first seed (mean "
        "F1 %: train on the augmented batches as they pass, val on the unseen validation "
        "subjects):\n\n" + "\n".join(curve_rows))
    if args.out:
        write_section(args.out, heading, text)
    if args.json:
        update_json(args.json, {f"finetune{key}": scores, f"maps{key}": maps,
                                "budget": {f"finetune{key}": budget},
                                "command": {f"finetune{key}": "python scripts/bench_finetune.py "
                                            + " ".join(argv)}})


def _mean_maps(values: list[dict[str, float]]) -> dict[str, float]:
    return {k: statistics.mean(v[k] for v in values) for k in values[0]} if values else {}


if __name__ == "__main__":
    main()
