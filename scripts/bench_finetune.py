"""Stage 2 on SynthAU: does HiVA beat a plain Swin, and does stage-1 pretraining help?

Every condition trains through the real CLI (``conf/finetune/synthau.yaml``) with the same
number of optimisation steps, selects its checkpoint on the validation subjects only, and is
scored on the unseen test subjects (mean F1 over SynthAU's 12 AUs). Conditions: (a) Swin +
linear head from scratch, (b) HiVA from scratch, (c) HiVA from the stage-1 checkpoint of
``scripts/bench_pretrain.py``, (d) (c) without the graph / DDCA / CDCA / text, each with all
and with ``--fraction`` of the labelled training subjects. Writes ``## Finetuning: HiVA``.

    python scripts/bench_finetune.py --seeds 0 1 2 --steps 150 --out docs/benchmarks.md
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from pathlib import Path

from aukit.data.datamodules import AUDataModule
from aukit.utils.report import benchmark_section, write_section
from finetune.__main__ import FinetuneCLI
from finetune.module import HiVAFinetuner

HEADING = "## Finetuning: HiVA"
CONDITIONS: dict[str, list[str]] = {
    "(a) Swin + linear head, scratch": ["--model.architecture", "linear"],
    "(b) HiVA, scratch": [],
    "(c) HiVA, stage-1 init": ["STAGE1"],
    "(d) (c) without graph": ["STAGE1", "--model.use_graph", "false"],
    "(d) (c) without DDCA": ["STAGE1", "--model.use_ddca", "false"],
    "(d) (c) without CDCA": ["STAGE1", "--model.use_cdca", "false"],
    "(d) (c) without text": ["STAGE1", "--model.use_text", "false"],
}
TRAIN_SUBJECTS = 30  # SynthAU's labelled train split


def run(condition: str, fraction: float, seed: int, args: argparse.Namespace) -> float:
    overrides = []
    for item in CONDITIONS[condition]:
        overrides += (["--model.pretrained", args.stage1.format(seed=seed)]
                      if item == "STAGE1" else [item])
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
        "--trainer.logger.init_args.name", f"{condition[:3].strip('()')}-f{fraction}-s{seed}",
        "--model.warmup_epochs", "0", "--data.label_fraction", str(fraction),
        "--data.batch_size", str(args.batch_size),
        "--data.synthau_samples_per_subject", str(args.samples_per_subject),
        "--data.synthau_eval_samples_per_subject", str(args.eval_samples),
        "--data.num_workers", str(args.workers), "--data.image_size", str(args.image_size),
        "--data.synthau_cache", args.cache, *overrides, *args.overrides])
    return 100 * float(cli.trainer.callback_metrics["test/f1_mean"])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--fractions", type=float, nargs="+", default=[1.0, 0.1])
    parser.add_argument("--conditions", nargs="+", default=list(CONDITIONS))
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--samples-per-subject", type=int, default=40)
    parser.add_argument("--eval-samples", type=int, default=20)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--seeds-ablations", type=int, nargs="+", default=None,
                        help="seeds for the (d) ablations (default: --seeds)")
    parser.add_argument("--cache", default="runs/cache/synthau", help="rendered-face cache")
    parser.add_argument("--stage1",
                        default="runs/bench/pretrain/region+relation-seed{seed}/last.ckpt")
    parser.add_argument("--log-dir", default="runs/bench/finetune")
    parser.add_argument("--trainer", default="cpu", help="preset under conf/trainer (gpu: bf16)")
    parser.add_argument("--out", default="docs/benchmarks.md")
    parser.add_argument("overrides", nargs="*", help="extra LightningCLI overrides (after --)")
    args = parser.parse_args(argv)
    missing = [s for s in args.seeds if not Path(args.stage1.format(seed=s)).is_file()]
    if missing and any("STAGE1" in CONDITIONS[c] for c in args.conditions):
        sys.exit(f"no stage-1 checkpoint for seeds {missing} at {args.stage1}; "
                 "run scripts/bench_pretrain.py first")
    started = time.time()
    # a run on another preset (a GPU budget) gets its own section beside the CPU one
    heading = HEADING + ("" if args.trainer == "cpu" else f" ({args.trainer})")
    scores = {(c, f): [] for c in args.conditions for f in args.fractions}
    ablation_seeds = args.seeds if args.seeds_ablations is None else args.seeds_ablations
    for seed in args.seeds:
        for fraction in args.fractions:
            for condition in args.conditions:
                if condition.startswith("(d)") and seed not in ablation_seeds:
                    continue
                scores[condition, fraction].append(run(condition, fraction, seed, args))
                print(f"{condition} | labels {fraction:.0%} | seed {seed}: "
                      f"{scores[condition, fraction][-1]:.1f}", flush=True)
    header = "| condition | " + " | ".join(f"{f:.0%} labelled subjects" for f in args.fractions)
    rows = [header + " |", "|---|" + "---:|" * len(args.fractions)]
    for condition in args.conditions:
        cells = []
        for fraction in args.fractions:
            values = scores[condition, fraction]
            spread = statistics.stdev(values) if len(values) > 1 else 0.0
            cells.append(f"{statistics.mean(values):.1f} ± {spread:.1f} "
                         f"({', '.join(f'{v:.1f}' for v in values)})")
        rows.append(f"| {condition} | " + " | ".join(cells) + " |")
    text = benchmark_section(
        heading, "scripts/bench_finetune.py", argv if argv is not None else sys.argv[1:],
        started,
        f"Test-subject mean F1 (%) on SynthAU's 12 AUs, mean ± sd over seeds {args.seeds} "
        f"(ablations: {ablation_seeds}; per-seed values in brackets); best-on-validation "
        f"checkpoint, {args.steps} steps of batch {args.batch_size} for every condition, "
        f"swin_test at {args.image_size} px, {args.samples_per_subject} faces per training "
        f"subject. Stage-1 checkpoints: `{args.stage1}`.", "\n".join(rows))
    print(text)
    if args.out:
        write_section(args.out, heading, text)


if __name__ == "__main__":
    main()
