"""3-fold cross-validation: train and test every fold, then the per-AU F1 table people publish.

``aukit-cv --dataset disfa --data-root PREPARED [--folds 1 2 3] [--trainer-config trainer/cpu.yaml]
[--config finetune/base.yaml --config data/disfa.yaml --config finetune/disfa.yaml]
[--out runs/cv/disfa]
[-- extra LightningCLI overrides, e.g. --trainer.devices 4 --model.pretrained stage1.ckpt]``

Each fold runs the installed ``aukit-finetune fit`` in a subprocess of its own (GPUs, DDP and
precision are trainer overrides; Lightning's DDP launcher re-runs the command line, which is then
that fold's and nothing else), then ``test`` on the last and on the best-on-validation checkpoint
(validation is a subject-disjoint carve of the training parts; nothing is selected on test).
Config names resolve as in ``aukit-finetune`` (a path, or a shipped config). The table lists
per-AU F1 per fold, the fold means and the 3-fold mean for both checkpoints, as Markdown and
CSV, with how many fold-list subjects the data has, next to published averages (as each paper
reports them), which are comparable only when every subject is there and all three folds ran.
``--dataset synthau`` runs the same code on three folds of SynthAU's labelled subjects
(``aukit.data.protocol.dataset_parts``).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import shutil
import subprocess
import sys
import sysconfig
from collections.abc import Collection, Sequence
from pathlib import Path

import torch

from aukit.au import au_keys
from aukit.configs import config_flags, finetune_configs, resolve_config
from aukit.data.manifest import read_manifest
from aukit.data.protocol import FOLDS, PROTOCOL_DATASETS, dataset_parts, fold_split
from aukit.data.readers import dataset_manifest, manifest_hash

CHECKPOINTS = ("last", "best")
# published average F1 (%) BP4D / DISFA, as each paper reports it (most select the model on
# the test fold)
PUBLISHED: dict[str, tuple[float, float]] = {
    "ME-GraphAU": (65.5, 63.1),
    "AU-Net": (65.0, 66.1),
    "MDHR": (66.6, 66.2),
    "FMAE-IAT (extra 9M-face pretraining)": (67.1, 70.1),
    "CLP (self-supervised)": (62.4, 57.4),
}
HIVA_DISFA_AU1 = 60.6
PROG = "aukit-cv"
FINETUNE_SCRIPT = "aukit-finetune"


def finetune_command() -> list[str]:
    """The ``aukit-finetune`` script installed with this environment (else the one on PATH)."""
    script = Path(sysconfig.get_path("scripts")) / FINETUNE_SCRIPT
    found = str(script) if script.is_file() else shutil.which(FINETUNE_SCRIPT)
    if found is None:
        raise FileNotFoundError(f"{FINETUNE_SCRIPT} is not installed in {sys.prefix} nor on PATH: "
                                "install aukit (make install, or pip install -e .)")
    return [found]


def finetune_args(fold: int, data_root: str | None, configs: Sequence[str],
                  trainer_config: str, out: Path, version: str, extra: list[str]) -> list[str]:
    """The LightningCLI arguments shared by a fold's fit and tests (``configs`` select the data
    module of the data set); logs go to out/version."""
    return (["-c", trainer_config, *config_flags(list(configs)), *extra,
             "--data.fold", str(fold)]
            + (["--data.data_root", data_root] if data_root else [])
            + ["--trainer.logger.class_path", "lightning.pytorch.loggers.TensorBoardLogger",
               "--trainer.logger.init_args.save_dir", str(out),
               "--trainer.logger.init_args.name", "",
               "--trainer.logger.init_args.version", version])


def _run(command: list[str], log: Path) -> None:
    print("$", " ".join(command), flush=True)
    with log.open("w") as f:
        code = subprocess.run(command, stdout=f, stderr=subprocess.STDOUT).returncode
    if code != 0:
        tail = "".join(log.read_text().splitlines(keepends=True)[-25:])
        raise RuntimeError(f"command failed (exit {code}); full log {log}:\n{tail}")


def _best_and_last(folder: Path) -> dict[str, Path]:
    """The last checkpoint, and the best-on-validation one recorded in its callback state."""
    last = folder / "last.ckpt"
    if not last.is_file():
        raise FileNotFoundError(f"no {last}: the config needs a ModelCheckpoint that monitors "
                                "val/f1_mean and aukit.checkpointing.LastCheckpoint")
    state = torch.load(last, map_location="cpu", weights_only=False)
    best = next((v.get("best_model_path") for k, v in state.get("callbacks", {}).items()
                 if k.startswith("ModelCheckpoint")), None)
    if not best or not Path(best).is_file():
        raise FileNotFoundError(
            f"{last} records no best-on-validation checkpoint: validation never ran in its "
            f"{state.get('global_step', 0)} training steps (it runs every "
            "--trainer.val_check_interval steps, else at each epoch end); train longer "
            "(--trainer.max_steps), validate sooner (--trainer.val_check_interval N), and keep "
            "a validation split (--data.val_subjects > 0)")
    return {"last": last, "best": Path(best)}


def _same_weights(a: Path, b: Path) -> bool:
    """True when two checkpoints were saved at the same step (the same weights)."""
    steps = [torch.load(p, map_location="cpu", weights_only=False).get("global_step")
             for p in (a, b)]
    return steps[0] == steps[1]


def run_fold(fold: int, data_root: str | None, configs: Sequence[str], trainer_config: str,
             out: Path, extra: list[str]) -> dict[str, dict]:
    """Fit one fold, test its last and best checkpoints; ``{checkpoint: test report}``."""
    folder = out / f"fold{fold}"
    if (folder / "fit" / "checkpoints").exists():
        # a second fit there would write last-v1.ckpt next to the old last.ckpt and mix runs
        raise FileExistsError(f"{folder / 'fit'} already holds a training run; pass "
                              "--skip-finished to reuse finished folds, or choose another --out "
                              "(nothing was deleted)")
    folder.mkdir(parents=True, exist_ok=True)
    cli = finetune_command()
    _run([*cli, "fit", *finetune_args(fold, data_root, configs, trainer_config, folder, "fit",
                                      extra), "--test_after_fit", "false"],
         folder / "fit.log")
    checkpoints = _best_and_last(folder / "fit" / "checkpoints")
    reports: dict[str, dict] = {}
    for name in CHECKPOINTS:
        if name == "best" and _same_weights(checkpoints["best"], checkpoints["last"]):
            reports["best"] = {**reports["last"], "checkpoint": str(checkpoints["best"])}
            continue  # the same weights give the same numbers: skip a second test
        version = f"test-{name}"
        _run([*cli, "test", *finetune_args(fold, data_root, configs, trainer_config, folder,
                                           version, extra),
              "--ckpt_path", str(checkpoints[name])], folder / f"{version}.log")
        reports[name] = json.loads((folder / version / "test_report.json").read_text())
    (folder / "reports.json").write_text(json.dumps(reports, indent=2))
    return reports


def subject_coverage(dataset: str, present: Collection[str],
                     folds: Sequence[int]) -> tuple[bool, str]:
    """Whether the run is comparable with published 3-fold results, and a sentence saying so:
    every fold-list subject found in the data (``present``) and every fold run."""
    listed = [s for part in dataset_parts(dataset) for s in part]
    missing = [s for s in listed if s not in present]
    found = f"{len(listed) - len(missing)} of {len(listed)} fold-list subjects found"
    gaps = ([found + f" (missing {', '.join(missing)})"] if missing else []) + (
        [f"{len(folds)} of {len(FOLDS)} folds run"] if len(folds) < len(FOLDS) else [])
    if gaps:
        return False, f"NOT comparable with published results: {'; '.join(gaps)}."
    return True, f"All {found}, all {len(FOLDS)} folds run."


def _nanmean(values: Sequence[float]) -> float:
    known = [v for v in values if not math.isnan(v)]
    return sum(known) / len(known) if known else math.nan


def _percent(value: float, digits: int) -> str:
    return "n/a" if math.isnan(value) else f"{value:.{digits}f}"


def results_table(dataset: str, aus: list[str], reports: dict[int, dict[str, dict]],
                  present: Collection[str]) -> tuple[list[list[str]], str]:
    """CSV rows and Markdown of per-AU F1 (%) per fold, fold means and the mean over folds, with
    the subjects found of those listed (a fold: its test part; the mean: every part).

    ``present`` holds the subjects the data has. An AU with no known label in a fold's test
    part (F1 nan in its report) is "n/a" there and left out of the means.
    """
    folds = sorted(reports)
    comparable, coverage = subject_coverage(dataset, present, folds)
    coverage = coverage if comparable else f"**{coverage}**"
    parts = {k: part for k, part in zip(FOLDS, dataset_parts(dataset), strict=True)}
    parts["mean"] = tuple(s for part in parts.values() for s in part)
    counts = {k: (sum(s in present for s in part), len(part)) for k, part in parts.items()}
    rows = [["checkpoint", "fold", *aus, "mean", "subjects_found", "subjects_listed"]]
    markdown = [coverage]
    for name in CHECKPOINTS:
        table = [[k, *(100 * float(reports[k][name]["metrics"][f"f1_{au}"]) for au in aus)]
                 for k in folds]
        for line in table:
            line.append(_nanmean(line[1:]))  # the fold mean over AUs
        mean = ["mean", *(_nanmean([line[i] for line in table]) for i in range(1, len(aus) + 2))]
        markdown += [f"\n### {name} checkpoint"
                     + (" (best on validation)" if name == "best" else " (end of training)"),
                     "", "| | subjects found | " + " | ".join(aus) + " | **avg** |",
                     "|---" * (len(aus) + 3) + "|"]
        for key, *values in [*table, mean]:
            label = (f"fold {key} (test part{key})" if key != "mean"
                     else f"mean of {len(folds)} folds")
            found, expected = counts[key]
            markdown.append(f"| {label} | {found} of {expected}"
                            + (" (all parts)" if key == "mean" else "") + " | "
                            + " | ".join(_percent(v, 1) for v in values) + " |")
            rows.append([name, label, *(_percent(v, 2) for v in values), str(found),
                         str(expected)])
    if any("n/a" in row for row in rows):
        markdown.append("\nn/a: no known labels for that AU in that fold's test part; the fold's "
                        "avg leaves it out, and the mean row averages each column over the folds "
                        "that have a number.")
    column = {"bp4d": 0, "disfa": 1}.get(dataset)
    if column is None:
        markdown.append(f"\nNo published numbers: {dataset} is not a public benchmark.")
    else:
        markdown += ["\n### Published average F1 (3-fold, "
                     + ("same part lists)" if comparable
                        else "full part lists): NOT comparable with the numbers above"),
                     "", "| method | avg F1 |", "|---|---|"]
        markdown += [f"| {m} | {v[column]:.1f} |" for m, v in PUBLISHED.items()]
        if not comparable:
            markdown.append(f"\n{coverage}")
        if dataset == "disfa":
            markdown.append(f"\nHiVA reports DISFA AU1 F1 {HIVA_DISFA_AU1}.")
        markdown.append("Most published numbers pick the epoch on the test fold; ours do not.")
    return rows, "\n".join(markdown)


def write_table(dataset: str, aus: list[str], reports: dict[int, dict[str, dict]],
                present: Collection[str], out: Path, header: str) -> Path:
    """``out/results.md`` and ``out/results.csv``; returns the Markdown path."""
    rows, markdown = results_table(dataset, aus, reports, present)
    with (out / "results.csv").open("w", newline="") as f:
        csv.writer(f).writerows(rows)
    (out / "results.md").write_text(f"{header}\n{markdown}\n")
    return out / "results.md"


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[:argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(
        prog=PROG, description=__doc__.split("\n\n")[0], allow_abbrev=False)
    parser.add_argument("--dataset", required=True, choices=PROTOCOL_DATASETS)
    parser.add_argument("--data-root", help="raw root or prepare output (not for synthau)")
    parser.add_argument("--folds", type=int, nargs="+", default=list(FOLDS), choices=FOLDS)
    parser.add_argument("--config", action="append",
                        help="a config path, or a shipped config by name, after the trainer "
                             "config; repeat to compose (default: finetune/base.yaml, "
                             "data/<dataset>.yaml, finetune/<dataset>.yaml)")
    parser.add_argument("--trainer-config", default="trainer/cpu.yaml",
                        help="a config path, or a shipped config by name (default: %(default)s)")
    parser.add_argument("--out", help="default: runs/cv/<dataset>")
    parser.add_argument("--skip-finished", action="store_true",
                        help="reuse folds whose reports.json exists (resume a long run)")
    args = parser.parse_args(argv)
    if (args.dataset == "synthau") != (args.data_root is None):
        parser.error("give --data-root for bp4d / disfa, and none for synthau")
    try:
        cross_validate(args, extra)
    except Exception as err:
        from aukit.cli import report_user_error  # Lightning loads only when something failed

        report_user_error(err, PROG)
        raise


def cross_validate(args: argparse.Namespace, extra: list[str]) -> None:
    """Run the folds ``main`` parsed and print the table."""
    config_names = args.config or finetune_configs(args.dataset)
    configs = [resolve_config(c) for c in config_names]
    trainer_config = resolve_config(args.trainer_config)
    out = Path(args.out or f"runs/cv/{args.dataset}")
    out.mkdir(parents=True, exist_ok=True)
    if args.data_root:
        # built once here, so the fold subprocesses reuse the cache instead of racing to write it
        manifest = dataset_manifest(args.dataset, args.data_root)
        digest = manifest_hash(manifest)
        present = set(read_manifest(manifest, args.dataset, skip_bad_rows=True).subject_names)
    else:
        digest, present = "synthau (rendered)", {s for p in dataset_parts("synthau") for s in p}
    print(subject_coverage(args.dataset, present, args.folds)[1], flush=True)
    for fold in args.folds:  # every fold's parts, before the first fold trains
        fold_split(args.dataset, fold, present, val_subjects=0)
    reports = {}
    for fold in args.folds:
        done = out / f"fold{fold}" / "reports.json"
        reports[fold] = (json.loads(done.read_text()) if args.skip_finished and done.is_file()
                         else run_fold(fold, args.data_root, configs, trainer_config, out,
                                       extra))
    aus = reports[args.folds[0]]["last"]["aus"]
    header = (f"## {args.dataset} {len(args.folds)}-fold cross-validation, per-AU F1 (%)\n\n"
              f"configs `{args.trainer_config}` + {' + '.join(f'`{c}`' for c in config_names)}"
              + (f", overrides `{' '.join(extra)}`" if extra else "")
              + f"; manifest sha256 `{digest}`; threshold 0.5, F1 over each whole test fold.")
    path = write_table(args.dataset, aus or au_keys(args.dataset), reports, present, out,
                       header)
    print(path.read_text())
    print(f"tables: {path} and {out / 'results.csv'}")


if __name__ == "__main__":
    main()
