"""The 3-fold subject-exclusive protocol of BP4D and DISFA, and its SynthAU stand-in.

The part lists are versioned data (``conf/protocol/folds.yaml``). Folds are named by the part they
test on: fold 1 tests on part1 and trains on part2 + part3. Beware of older code (and some
released list files) where "fold1" means "test on part3": compare results part by part, not by
fold number. Validation is a seeded, subject-disjoint carve of the training parts, never the test
part, so checkpoints are selected without looking at test labels.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import yaml

from aukit.configs import CONFIG_DIR
from aukit.data.synthau import split_subjects

log = logging.getLogger(__name__)

FOLDS = (1, 2, 3)
PROTOCOL_DATASETS = ("bp4d", "disfa", "synthau")
ENV_FOLDS = "AUKIT_FOLDS"


def default_folds_path() -> Path:
    """``$AUKIT_FOLDS``, else the shipped ``conf/protocol/folds.yaml`` (``aukit.configs``)."""
    if os.environ.get(ENV_FOLDS):
        return Path(os.environ[ENV_FOLDS]).expanduser()
    return CONFIG_DIR / "protocol" / "folds.yaml"


@lru_cache
def load_parts(path: str | None = None) -> dict[str, tuple[tuple[str, ...], ...]]:
    """``{dataset: (part1, part2, part3)}`` subject lists from the folds file, validated."""
    file = Path(path) if path else default_folds_path()
    if not file.is_file():
        raise FileNotFoundError(f"fold list file {file} does not exist; set "
                                f"{ENV_FOLDS}=/path/to/folds.yaml")
    data = yaml.safe_load(file.read_text())
    parts: dict[str, tuple[tuple[str, ...], ...]] = {}
    for dataset, lists in data.items():
        if dataset == "version":
            continue
        names = [f"part{k}" for k in FOLDS]
        if not isinstance(lists, dict) or sorted(lists) != names:
            raise ValueError(f"{file}: {dataset} must list exactly {names}")
        parts[dataset] = tuple(tuple(str(s) for s in lists[n]) for n in names)
        flat = [s for part in parts[dataset] for s in part]
        repeated = sorted({s for s in flat if flat.count(s) > 1})
        if repeated:
            raise ValueError(f"{file}: {dataset} lists {repeated} in more than one part; "
                             "folds must be subject-exclusive")
    return parts


def dataset_parts(dataset: str) -> tuple[tuple[str, ...], ...]:
    """The three parts of ``dataset``. SynthAU deals its labelled subjects (train, val and test
    of the default split, as strings) round-robin into three parts."""
    if dataset == "synthau":
        labelled = sorted(s for split in ("train", "val", "test") for s in split_subjects(split))
        return tuple(tuple(str(s) for s in labelled[k::3]) for k in range(3))
    parts = load_parts()
    if dataset not in parts:
        raise ValueError(f"no fold lists for dataset {dataset!r}; the protocol covers "
                         f"{sorted(parts) + ['synthau']} (use val/test manifests for other data)")
    return parts[dataset]


def choose_subjects(items: Sequence, fraction: float, seed: int) -> list:
    """A seeded ``round(fraction * n)`` (at least 1) of ``items``, sorted; a smaller fraction
    keeps a subset of what a larger one keeps (same permutation, shorter prefix)."""
    ordered = sorted(items)
    count = max(1, round(fraction * len(ordered)))
    return sorted(np.random.default_rng(seed).permutation(ordered)[:count].tolist())


@dataclass(frozen=True)
class FoldSplit:
    """Subject lists of one fold. ``missing`` are fold-list subjects absent from the data,
    ``unlisted`` data subjects in no part (left out of every split)."""

    fold: int
    train: list[str]
    val: list[str]
    test: list[str]
    missing: list[str]
    unlisted: list[str]


def fold_split(dataset: str, fold: int, subjects: Iterable[str] | None = None,
               val_subjects: float | Sequence[str] = 0.15, seed: int = 0) -> FoldSplit:
    """Train / val / test subjects of ``fold`` (tests on part ``fold``).

    Args:
        dataset: ``"bp4d"``, ``"disfa"`` or ``"synthau"``.
        fold: 1, 2 or 3.
        subjects: the subjects the data really has (None = every listed subject).
        val_subjects: a fraction of the training parts' subjects (seeded with ``seed + 1``, as
            the data module's carve) or explicit names from the training parts; 0 = no val.
        seed: the carve's seed.
    """
    if fold not in FOLDS:
        raise ValueError(f"fold must be one of {FOLDS} (fold k tests on part k), got {fold!r}")
    parts = dataset_parts(dataset)
    listed = [s for part in parts for s in part]
    present = set(listed) if subjects is None else {str(s) for s in subjects}
    missing = [s for s in listed if s not in present]
    unlisted = sorted(present - set(listed))
    if missing:
        log.warning("%s: %d fold-list subject(s) have no data: %s; results are not comparable "
                    "with published ones until they are added", dataset, len(missing), missing)
    if unlisted:
        log.warning("%s: subject(s) %s are in no part of the fold lists and are left out",
                    dataset, unlisted)
    test = [s for s in parts[fold - 1] if s in present]
    pool = [s for k, part in enumerate(parts) if k != fold - 1 for s in part if s in present]
    if not test or not pool:
        which = [parts[fold - 1]] if not test else [p for k, p in enumerate(parts) if k != fold - 1]
        absent = [s for part in which for s in part]
        raise ValueError(f"{dataset} fold {fold}: the data has no subject of the "
                         f"{'test part' if not test else 'training parts'} (none of "
                         f"{', '.join(absent)}); check data_root / the manifest's subject "
                         "column, or leave the fold out (aukit-cv --folds)")
    val = _carve(pool, val_subjects, seed, f"{dataset} fold {fold}")
    train = [s for s in pool if s not in set(val)]
    return FoldSplit(fold, train, val, test, missing, unlisted)


def _carve(pool: list[str], val_subjects: float | Sequence[str], seed: int,
           where: str) -> list[str]:
    if isinstance(val_subjects, float | int):
        if not 0 <= val_subjects < 1:
            raise ValueError(f"val_subjects as a fraction must be in [0, 1), got {val_subjects}")
        val = choose_subjects(pool, val_subjects, seed + 1) if val_subjects else []
    else:
        val = [str(s) for s in val_subjects]
        outside = sorted(set(val) - set(pool))
        if outside:
            raise ValueError(f"{where}: val_subjects {outside} are not in the training parts "
                             f"{sorted(pool)}; validation must come from the training parts")
    if val and len(val) >= len(pool):
        raise ValueError(f"{where}: val_subjects takes every training subject; leave some")
    return val
