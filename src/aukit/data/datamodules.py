"""LightningDataModules: labelled AU data (finetuning, probing) and unlabeled faces (pretraining).

Constructor arguments are plain (str / int / float / bool / lists) so that LightningCLI and YAML
configs can set them. Every split is subject-exclusive.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import lightning as L
import numpy as np
import torch
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
from lightning.pytorch.utilities import rank_zero_info
from torch.utils.data import DataLoader, Dataset, Sampler

from aukit.au import DATASET_AUS, au_numbers
from aukit.data.crop_store import CropStore
from aukit.data.datasets import (
    ImageFolderDataset,
    ManifestDataset,
    SynthAUDataset,
    folder_has_landmarks,
)
from aukit.data.manifest import Manifest, manifest_aus, read_manifest
from aukit.data.prepare import write_landmarks_sidecar
from aukit.data.protocol import choose_subjects, fold_split
from aukit.data.readers import dataset_manifest, manifest_hash, manifest_summary
from aukit.data.sampling import GroupedKeySampler, ResumableDataLoader
from aukit.data.synthau import split_subjects, unlabeled_subjects
from aukit.data.synthau_landmarks import SYNTHAU_LANDMARKS, resolve_synthau_landmarks
from aukit.data.transforms import eval_transform, pretrain_transform, train_transform
from aukit.landmarks import AUTO, DLIB68, SOURCES, TEMPLATE, resolve_source
from aukit.utils.settings import plain, settings

SPLITS = ("train", "val", "test")
# a split is a manifest, or the SynthAU subject ids it renders
Split = Manifest | list[int]


def resolve_aus(aus: list[str] | str | None, dataset: str,
                manifest: str | None) -> tuple[int, ...]:
    """The AU list: given names, ``"AU1,AU12"``, an AU-set name such as ``"bp4d"``, or (None) the
    dataset's standard AUs / every AU column of a CSV manifest."""
    if aus is None:
        if dataset in DATASET_AUS:
            return DATASET_AUS[dataset]
        return manifest_aus(manifest)  # type: ignore[arg-type]  # checked by the caller
    if isinstance(aus, str) and aus.strip().lower() not in DATASET_AUS:
        return au_numbers([a for a in aus.split(",") if a.strip()])
    return au_numbers(aus.strip() if isinstance(aus, str) else aus)


def _existing_file(path: str | None, what: str) -> str | None:
    if path is not None and not Path(path).expanduser().is_file():
        raise FileNotFoundError(f"{what} {path} does not exist; give the path of a CSV or JSON "
                                "manifest")
    return path


def subject_ids(split: Split) -> set[str]:
    return set(split.subjects) if isinstance(split, Manifest) else {str(s) for s in split}


def check_subject_exclusive(splits: dict[str, Split]) -> None:
    """Raise if two splits share a subject (results would leak identity)."""
    names = list(splits)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            shared = subject_ids(splits[a]) & subject_ids(splits[b])
            if shared:
                raise ValueError(f"the {a} and {b} splits share subjects {sorted(shared)[:10]}; "
                                 "splits must be subject-exclusive: fix the manifests or "
                                 "--data.val_subjects")


def _transform_seed(datamodule: L.LightningDataModule) -> int:
    """Augmentation seed: reproducible, and distinct per DDP rank so ranks augment differently."""
    rank = datamodule.trainer.global_rank if datamodule.trainer is not None else 0
    return datamodule.hparams.seed * 1000 + rank


def _replicas(datamodule: L.LightningDataModule) -> tuple[int, int]:
    """(processes, this process's rank) of the attached trainer; (1, 0) without one."""
    trainer = datamodule.trainer
    return (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)


def make_loader(dataset: Dataset, batch_size: int, num_workers: int, shuffle: bool,
                drop_last: bool = False, seed: int = 0, replicas: tuple[int, int] = (1, 0),
                sampler: Sampler | None = None) -> DataLoader:
    """Shuffled (training) loaders are resumable mid-epoch; evaluation loaders are plain.
    A shuffled loader draws from ``sampler`` when given (e.g. a ``GroupedKeySampler`` made for
    the same ``replicas``), else from an ``EpochKeySampler``.

    ``replicas`` = (processes, rank) shards both under DDP with samplers Lightning keeps as they
    are: training pads the epoch so every rank steps equally often; evaluation gives every
    sample to exactly one rank (no padding copies counted twice by the metrics; ranks may see
    one batch more or less, which evaluation, with no gradient sync, allows).
    """
    common = dict(batch_size=batch_size, drop_last=drop_last, num_workers=num_workers,
                  persistent_workers=num_workers > 0, pin_memory=torch.cuda.is_available())
    if shuffle:
        return ResumableDataLoader(dataset, seed=seed, num_replicas=replicas[0],
                                   rank=replicas[1], sampler=sampler, **common)
    sampler = (UnrepeatedDistributedSampler(dataset, *replicas, shuffle=False)
               if replicas[0] > 1 else None)
    return DataLoader(dataset, shuffle=False, sampler=sampler, **common)


class LabelStatistics(NamedTuple):
    """What the training split's labels say, for the loss and the graph prior."""

    class_weights: torch.Tensor  # [A] inverse occurrence rates over known labels, mean 1
    positive_weights: torch.Tensor  # [A] negatives / positives, BCE's pos_weight
    cooccurrence: torch.Tensor  # [A, A] P(AU j present | AU i present), 0 when undefined


def label_statistics(labels: torch.Tensor, mask: torch.Tensor) -> LabelStatistics:
    """Statistics of labels and mask ``[N, A]``. An AU never present counts as half a positive,
    so its weights stay finite; co-occurrence counts frames where both labels are known."""
    y = labels.double() * mask
    m = mask.double()
    known = m.sum(0)
    positives = y.sum(0).clamp(min=0.5)
    weights = known.clamp(min=1) / positives
    both = y.T @ y  # [A, A]: frames with i and j present
    given = y.T @ m  # [A, A]: frames with i present and j known
    cooc = torch.where(given > 0, both / given.clamp(min=1), torch.zeros_like(both))
    return LabelStatistics((weights / weights.mean()).float(),
                           ((known - positives).clamp(min=0) / positives).float(), cooc.float())


class AUDataModule(L.LightningDataModule):
    """Labelled AU data for finetuning and linear probing: what every source shares.

    A subclass says where the frames come from: ``SynthAUDataModule`` renders SynthAU subjects,
    ``ManifestDataModule`` reads a CSV / JSON manifest, ``BP4DDataModule`` / ``DISFADataModule``
    read those sets (a raw root or an ``aukit-prepare`` folder) with their 3-fold protocol. A
    config selects one with ``data: {class_path: aukit.data.SynthAUDataModule, init_args: ...}``
    (or ``--data SynthAUDataModule``); the arguments here are every source's.

    ``aus``: AU names, ``"AU1,AU12"``, an AU-set name such as ``"bp4d"``, or None for the
    source's standard AUs (a CSV manifest: its AU columns). ``val_subjects``: the validation
    split carved from the training subjects, a fraction or names (0: none). ``label_fraction``
    keeps a seeded fraction of the training subjects (after carving validation). Every split is
    subject-exclusive (``check_subject_exclusive``).

    Batches hold ``image`` uint8 ``[B, 3, S, S]``, ``landmarks`` ``[B, 68, 2]``, ``labels`` and
    ``label_mask`` ``[B, A]``; the stage modules normalise images on the device
    (``aukit.data.transforms.normalize_images``).
    """

    dataset: str = ""  # the source's name in logs, summaries and the fold lists
    fold: int | None = None  # the 3-fold protocol's test part, for the sources that have one
    manifest: str | None = None  # the training manifest, for the sources that read one
    manifest_hash: str | None = None

    def __init__(self, aus: list[str] | str | None = None, val_subjects: float | list[str] = 0.15,
                 label_fraction: float = 1.0, image_size: int = 224, batch_size: int = 32,
                 num_workers: int = 0, seed: int = 0) -> None:
        super().__init__()
        if not self.dataset:
            raise ValueError(f"{type(self).__name__} names no source: use SynthAUDataModule, "
                            "ManifestDataModule, BP4DDataModule or DISFADataModule "
                            "(--data SynthAUDataModule)")
        # the model logs the resolved AU list; the raw request would clash with it
        self.save_hyperparameters(ignore=["aus"])
        if not 0 < label_fraction <= 1:
            raise ValueError(f"--data.label_fraction must be in (0, 1], got {label_fraction}")
        if isinstance(val_subjects, float | int) and not 0 <= val_subjects < 1:
            raise ValueError("--data.val_subjects as a fraction must be in [0, 1), got "
                             f"{val_subjects}")
        if image_size < 32 or batch_size < 1 or num_workers < 0:
            raise ValueError("need --data.image_size >= 32, --data.batch_size >= 1 and "
                             f"--data.num_workers >= 0; got {image_size}, {batch_size}, "
                             f"{num_workers}")
        self.aus = resolve_aus(aus, self.dataset, self.manifest)
        self.au_names = [f"AU{n}" for n in self.aus]
        self.val_subjects = val_subjects
        self.label_fraction = label_fraction
        self.image_size = image_size
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.seed = seed
        self._splits: dict[str, Split] | None = None
        self._datasets: dict[tuple[str, bool], Dataset] = {}  # key: (split, augmenting?)
        self._labels: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    # ----------------------------------------------------------------- what a source provides
    def _read_splits(self) -> dict[str, Split]:
        """Train / val / test of this source; a split it does not have is left out."""
        raise NotImplementedError

    def _make_dataset(self, split: str, source: Split, transform) -> Dataset:
        """The dataset of one split's ``source`` with ``transform``."""
        raise NotImplementedError

    def _missing_split_fix(self, split: str) -> str:
        """What to set so that ``split`` exists."""
        return "give --data.val_subjects > 0"

    # ----------------------------------------------------------------- splits
    def splits(self) -> dict[str, Split]:
        """Train / val / test as manifests or SynthAU subject lists (read once, then cached);
        a split that is not available (no test manifest, ``val_subjects=0``) is left out."""
        if self._splits is None:
            splits = self._read_splits()
            check_subject_exclusive(splits)
            self._splits = splits
        return self._splits

    # ----------------------------------------------------------------- datasets
    def dataset_for(self, split: str, train: bool = False) -> Dataset:
        """The dataset of ``split`` with the train (augmenting) or eval transform."""
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; use one of {SPLITS}")
        splits = self.splits()
        if split not in splits:
            raise ValueError(f"no {split} split for {type(self).__name__}: "
                             f"{self._missing_split_fix(split)}")
        key = (split, train)
        if key not in self._datasets:
            # uint8 out: the stage modules normalise whole batches on the device
            transform = (train_transform(self.image_size, _transform_seed(self), normalize=False)
                         if train else eval_transform(self.image_size, normalize=False))
            self._datasets[key] = self._make_dataset(split, splits[split], transform)
        return self._datasets[key]

    def setup(self, stage: str | None = None) -> None:
        self._log_data()
        needed = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",),
                  "predict": ("test",)}.get(stage or "fit", ())
        for split in needed:
            if split == "val" and "val" not in self.splits():
                continue  # val_subjects=0: train without validation
            self.dataset_for(split, train=split == "train")

    def _log_data(self) -> None:
        """Say once per run which data it uses: the manifest hash, fold and subjects."""
        if getattr(self, "_logged", False):
            return
        self._logged = True
        where = (f"manifest {self.manifest} sha256 {self.manifest_hash}" if self.manifest
                 else "SynthAU (rendered)")
        fold = f", fold {self.fold} (tests on part{self.fold})" if self.fold else ""
        subjects = "; ".join(f"{k} {sorted(subject_ids(v))}" for k, v in self.splits().items())
        rank_zero_info(f"data: {self.dataset} {where}{fold}\nsubjects: {subjects}")
        full = self.splits().get("train")
        if isinstance(full, Manifest):
            rank_zero_info(f"train split {manifest_summary(full)}")
        logger = self.trainer.logger if self.trainer is not None else None
        if logger is not None:
            logger.log_hyperparams({"data_manifest_hash": self.manifest_hash or "synthau",
                                    "data_fold": self.fold or 0})

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.dataset_for("train", train=True), shuffle=True)

    def val_dataloader(self) -> DataLoader | list:
        return self.split_dataloader("val") if "val" in self.splits() else []

    def test_dataloader(self) -> DataLoader:
        return self.split_dataloader("test")

    def predict_dataloader(self) -> DataLoader:
        """The test split (eval transform): what a trained model is usually run on."""
        return self.split_dataloader("test")

    def split_dataloader(self, split: str, shuffle: bool = False) -> DataLoader:
        """A loader over ``split`` with the eval transform (used by probes and evaluation)."""
        return self._loader(self.dataset_for(split), shuffle=shuffle)

    def _loader(self, dataset: Dataset, shuffle: bool) -> DataLoader:
        return make_loader(dataset, self.batch_size, self.num_workers, shuffle,
                           seed=self.seed, replicas=_replicas(self))

    # ----------------------------------------------------------------- statistics
    def split_labels(self, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Labels ``[N, A]`` float and mask ``[N, A]`` bool of a split (SynthAU renders once)."""
        if split not in self._labels:
            source = self.splits()[split]
            if isinstance(source, Manifest):
                labels, mask = torch.from_numpy(source.labels), torch.from_numpy(source.mask)
            else:
                dataset = self.dataset_for(split)
                labels = torch.from_numpy(np.stack([dataset.raw_labels(i)
                                                    for i in range(len(dataset))]))
                mask = torch.ones_like(labels, dtype=torch.bool)
            self._labels[split] = (labels, mask)
        return self._labels[split]

    def train_label_statistics(self) -> LabelStatistics:
        """Class weights, BCE positive weights and AU co-occurrence of the training split's
        known labels (see ``label_statistics``)."""
        return label_statistics(*self.split_labels("train"))

    def summary(self) -> str:
        """Subjects, frames and per-AU base rates of each available split."""
        lines = [f"{self.dataset} data, AUs {', '.join(self.au_names)}"]
        for split, source in self.splits().items():
            labels, mask = self.split_labels(split)
            rates = ((labels * mask).sum(0) / mask.sum(0).clamp(min=1)).tolist()
            rate_text = " ".join(f"{n} {r:.2f}" for n, r in zip(self.au_names, rates, strict=True))
            lines.append(f"{split}: {len(subject_ids(source))} subjects, {len(labels)} frames; "
                         f"base rates {rate_text}")
        return "\n".join(lines)


class SynthAUDataModule(AUDataModule):
    """The embedded SynthAU faces, rendered: its train / val / test subjects, or with ``fold``
    the 3-fold stand-in protocol over the labelled subjects (``aukit.data.protocol``; validation
    carved from the training parts by ``val_subjects``).

    Args:
        synthau_samples_per_subject: faces per training subject.
        synthau_eval_samples_per_subject: faces per validation / test subject.
        fold: the 3-fold protocol's test part (1, 2 or 3); None: the fixed splits.
        synthau_cache: a folder (``"auto"``: the shared one of ``synthau_cache_dir``) that keeps
            rendered faces on disk so later epochs and runs only read them; None renders them
            every time.
        landmarks: which landmarks the faces come with: ``auto`` / ``dlib68``, those the
            toolkit's landmark stage (MTCNN -> dlib68) finds on each render, as a user's
            pipeline gives them; ``exact``, the renderer's own, an oracle for labelled ceiling
            rows only; ``template``, the canonical face's. Detected landmarks are found once
            per face (``prepare_data``, with a progress bar) and kept in ``synthau_cache``, or
            without one in the shared folder (a few hundred bytes a face).
        **kwargs: ``AUDataModule``'s arguments.
    """

    dataset = "synthau"

    def __init__(self, synthau_samples_per_subject: int = 40,
                 synthau_eval_samples_per_subject: int = 20, fold: int | None = None,
                 synthau_cache: str | None = None, landmarks: str = AUTO, **kwargs) -> None:
        super().__init__(**kwargs)
        self.fold = fold
        self.samples_per_subject = {"train": synthau_samples_per_subject,
                                    "val": synthau_eval_samples_per_subject,
                                    "test": synthau_eval_samples_per_subject}
        self.cache_dir = synthau_cache_dir(synthau_cache)
        self.landmarks = resolve_synthau_landmarks(landmarks)
        self.landmark_cache = landmark_cache_dir(synthau_cache)

    def _read_splits(self) -> dict[str, Split]:
        if self.fold is not None:
            split = fold_split(self.dataset, self.fold, None, self.val_subjects, self.seed)
            train = choose_subjects([int(s) for s in split.train], self.label_fraction, self.seed)
            return {"train": train, "val": [int(s) for s in split.val],
                    "test": [int(s) for s in split.test]}
        train = choose_subjects(split_subjects("train"), self.label_fraction, self.seed)
        return {"train": train, "val": split_subjects("val"), "test": split_subjects("test")}

    def _make_dataset(self, split: str, source: Split, transform) -> Dataset:
        return SynthAUDataset(source, self.samples_per_subject[split], self.aus,  # type: ignore[arg-type]
                              transform, seed=self.seed, cache_dir=self.cache_dir,
                              landmarks=self.landmarks, landmark_cache=self.landmark_cache)

    def prepare_data(self) -> None:
        """Finds the landmarks of every split's faces once (one process per node)."""
        for split, source in self.splits().items():
            counts = self._make_dataset(split, source, None).prepare_landmarks(  # type: ignore[attr-defined]
                f"SynthAU {split}")
            if counts["template"]:
                rank_zero_info(f"landmarks: the fit failed on {counts['template']} of "
                               f"{counts['faces']} SynthAU {split} faces, which get the template")


class ManifestDataModule(AUDataModule):
    """Labelled faces of your own: ``manifest`` (CSV or JSON: image, subject, AU columns; see
    ``aukit.data.manifest``) for training, ``val_manifest`` or a subject-disjoint carve of
    ``val_subjects`` for validation, ``test_manifest`` for testing.

    Manifests are checked before training, every image included (``read_manifest``,
    ``verify_images``); a bad row (missing or corrupt image, bad label or landmarks) fails then,
    or with ``skip_bad_rows`` is dropped with the counts logged. ``crop_store`` serves the images
    from an ``aukit.data.crop_store`` array. ``manifest_hash`` (sha256 of the manifest) is logged
    with every run. Takes ``AUDataModule``'s arguments too.
    """

    dataset = "csv"

    def __init__(self, manifest: str | None = None, val_manifest: str | None = None,
                 test_manifest: str | None = None, skip_bad_rows: bool = False,
                 crop_store: str | None = None, **kwargs) -> None:
        if manifest is None:
            raise ValueError(f"{type(self).__name__} needs {self._manifest_flags()}")
        self.manifest = _existing_file(manifest, "manifest")
        self.manifest_hash = manifest_hash(manifest)
        super().__init__(**kwargs)
        self.val_manifest = _existing_file(val_manifest, "val_manifest")
        self.test_manifest = _existing_file(test_manifest, "test_manifest")
        self.skip_bad_rows = skip_bad_rows
        self.crop_store = CropStore(crop_store) if crop_store is not None else None

    @staticmethod
    def _manifest_flags() -> str:
        return "--data.manifest <path to the training manifest (CSV or JSON)>"

    def _missing_split_fix(self, split: str) -> str:
        return ("give --data.test_manifest <path>" if split == "test"
                else "give --data.val_manifest <path> or --data.val_subjects > 0")

    def _read(self, path: str) -> Manifest:
        # every image is checked to decode now, not when a loader first reaches a corrupt one
        # hours in (cached: a second run only stats the files); images served from a crop store
        # were decoded when the store was written and are not read again, so no check there
        return read_manifest(path, self.aus, skip_bad_rows=self.skip_bad_rows,
                             verify_images=self.crop_store is None)

    def _read_splits(self) -> dict[str, Split]:
        full = self._read(self.manifest)  # type: ignore[arg-type]  # required in __init__
        splits: dict[str, Split] = {}
        subjects = full.subject_names
        if self.val_manifest is not None:
            splits["val"] = self._read(self.val_manifest)
            train_subjects = subjects
        else:
            val = self._carve_val(full)
            if val:
                splits["val"] = full.subset(val)
            train_subjects = [s for s in subjects if s not in set(val)]
        kept = choose_subjects(train_subjects, self.label_fraction, self.seed)
        splits["train"] = full.subset(kept)
        if self.test_manifest is not None:
            splits["test"] = self._read(self.test_manifest)
        return splits

    def _carve_val(self, full: Manifest) -> list[str]:
        subjects = full.subject_names
        if not isinstance(self.val_subjects, float | int):
            val = [str(s) for s in self.val_subjects]
            unknown = sorted(set(val) - set(subjects))
            if unknown:
                raise ValueError(f"--data.val_subjects {unknown} are not in {full.source}; it has "
                                 f"{sorted(subjects)}")
        elif self.val_subjects == 0:
            return []
        else:
            if len(subjects) < 2:
                raise ValueError(f"{full.source} has {len(subjects)} subject; a validation "
                                 "split needs 2 or more: give --data.val_manifest <path> or "
                                 "--data.val_subjects 0")
            val = choose_subjects(subjects, self.val_subjects, self.seed + 1)
        if len(val) >= len(subjects):
            raise ValueError(f"--data.val_subjects takes every subject of {full.source}; leave "
                             "some for training")
        return val

    def _make_dataset(self, split: str, source: Split, transform) -> Dataset:
        return ManifestDataset(source, transform, store=self.crop_store)  # type: ignore[arg-type]


class ProtocolDataModule(ManifestDataModule):
    """A public data set with a reader and the 3-fold protocol; ``BP4DDataModule`` and
    ``DISFADataModule`` name the set (its standard AUs, reader and fold lists).

    ``data_root`` builds the manifest from a raw root or an ``aukit-prepare`` output folder
    (cached, see ``aukit.data.readers.dataset_manifest``); or give ``manifest``. ``fold`` applies
    the 3-fold protocol: test on part ``fold``, train on the other two parts, validation carved
    from those by ``val_subjects`` (``aukit.data.protocol``); without it the splits are
    ``ManifestDataModule``'s. Takes ``ManifestDataModule``'s arguments too.
    """

    def __init__(self, data_root: str | None = None, fold: int | None = None,
                 manifest: str | None = None, val_manifest: str | None = None,
                 test_manifest: str | None = None, **kwargs) -> None:
        if data_root is not None:
            if manifest is not None:
                raise ValueError(f"{type(self).__name__} got --data.data_root and "
                                 "--data.manifest: give one of them")
            manifest = str(dataset_manifest(self.dataset, data_root))
        if fold is not None and (val_manifest or test_manifest):
            raise ValueError(f"--data.fold {fold} applies the 3-fold protocol, which carves "
                             "validation and test itself; drop --data.val_manifest / "
                             "--data.test_manifest (or --data.fold)")
        super().__init__(manifest=manifest, val_manifest=val_manifest,
                         test_manifest=test_manifest, **kwargs)
        self.fold = fold

    @staticmethod
    def _manifest_flags() -> str:
        return ("--data.data_root <raw root or aukit-prepare folder> or --data.manifest <path to "
                "the training manifest (CSV or JSON)>")

    def _missing_split_fix(self, split: str) -> str:
        return super()._missing_split_fix(split) + " (or --data.fold 1|2|3)"

    def _read_splits(self) -> dict[str, Split]:
        if self.fold is None:
            return super()._read_splits()
        full = self._read(self.manifest)  # type: ignore[arg-type]
        split = fold_split(self.dataset, self.fold, full.subject_names, self.val_subjects,
                           self.seed)
        splits: dict[str, Split] = {"test": full.subset(split.test)}
        if split.val:
            splits["val"] = full.subset(split.val)
        splits["train"] = full.subset(choose_subjects(split.train, self.label_fraction,
                                                      self.seed))
        return splits


class BP4DDataModule(ProtocolDataModule):
    """BP4D: 12 AUs, 41 subjects in the 3-fold lists (``conf/protocol/folds.yaml``)."""

    dataset = "bp4d"


class DISFADataModule(ProtocolDataModule):
    """DISFA: 8 AUs (present = intensity >= 2), 27 subjects in the 3-fold lists."""

    dataset = "disfa"


# the labelled sources by name (the probe's --data.probe.dataset)
LABELLED_DATAMODULES: dict[str, type[AUDataModule]] = {
    m.dataset: m for m in (SynthAUDataModule, ManifestDataModule, BP4DDataModule,
                           DISFADataModule)}

def synthau_cache_dir(cache: str | None) -> str | None:
    """The folder where SynthAU keeps rendered faces: ``"auto"`` is ``$AUKIT_CACHE/synthau``
    (the variable the text feature cache also reads) or else ``~/.cache/aukit/synthau``; ``None``
    renders every face every time."""
    if cache != "auto":
        return cache
    root = os.environ.get("AUKIT_CACHE")
    return str((Path(root).expanduser() if root else Path.home() / ".cache" / "aukit") / "synthau")


def landmark_cache_dir(cache: str | None) -> str:
    """Where SynthAU's detected landmarks are kept: ``synthau_cache_dir(cache)``, or the shared
    folder when rendered faces are not kept (they are a few hundred bytes a face, and detection
    is the slow part)."""
    return synthau_cache_dir(cache or "auto")  # type: ignore[return-value]


POSITIVES = ("augment", "clip")



@dataclass(frozen=True)
class ProbeData:
    """The labelled set the stage-1 linear probe fits and scores (``--data.probe.*``).

    Args:
        dataset: synthau (rendered, sharing the SynthAU cache), or csv / bp4d / disfa reading
            ``manifest``.
        manifest: a labelled manifest (CSV or JSON) for csv / bp4d / disfa.
        aus: the AUs to probe (null: the data set's).
        samples_per_subject: SynthAU faces rendered per subject.
    """

    dataset: str = "synthau"
    manifest: str | None = None
    aus: list[str] | str | None = None
    samples_per_subject: int = 20


DEFAULT_PROBE = ProbeData()

class UnlabeledFaceDataModule(L.LightningDataModule):
    """Unlabeled faces for pretraining, ``views`` augmented views each, plus probe data.
    Batches hold ``image`` uint8 ``[B, V, 3, S, S]``, ``landmarks`` ``[B, V, 68, 2]`` and, where
    known, ``subject``.

    Args:
        source: synthau (rendered identities never labelled, ``unlabeled_subjects``) or a
            folder of face images (``ImageFolderDataset``: a sub-folder or a subjects.csv row
            gives each image its person).
        image_size: the crops' side in pixels (the model's, linked).
        views: augmented views per face (the contrastive losses compare 2).
        batch_size: faces per batch.
        faces_per_subject: M > 0: every batch holds batch_size / M people x M faces each
            (``GroupedKeySampler``), so a contrastive loss must tell one person's expressions
            apart; 0: random batches.
        num_workers: data loader worker processes.
        synthau_subjects: SynthAU identities in the pool.
        synthau_samples_per_subject: SynthAU faces rendered per identity.
        seed: the sampler's and the augmentations' seed.
        probe: the linear probe's labelled set (``ProbeData``).
        synthau_cache: where rendered faces are kept, so only the first epoch renders
            (auto: under $AUKIT_CACHE; null: nowhere).
        positives: what a positive pair is: augment (two augmentations of one image) or clip
            (two frames of one clip: the same expression under other pose and light; a folder
            takes a neighbouring image of the same person, within clip_window images).
        clip_window: how far, in sorted images, a folder's clip partner may lie.
        landmarks: dlib68 (or auto, with dlib installed) runs the toolkit's landmark stage
            once and caches it (a folder's landmarks.json; SynthAU, every rendered face);
            template leaves a folder as it is (SynthAU: the canonical face); exact (SynthAU
            only) serves the renderer's landmarks, an oracle.
    """

    def __init__(self, source: str = "synthau", image_size: int = 224, views: int = 2,
                 batch_size: int = 32, faces_per_subject: int = 4, num_workers: int = 0,
                 synthau_subjects: int = 300, synthau_samples_per_subject: int = 8,
                 seed: int = 0, probe: ProbeData = DEFAULT_PROBE,
                 synthau_cache: str | None = "auto",
                 positives: str = "augment", clip_window: int = 2,
                 landmarks: str = AUTO) -> None:
        super().__init__()
        probe_data = settings(ProbeData, probe)
        probe = plain(probe_data)  # checkpoints keep plain data
        self.save_hyperparameters()
        allowed = SYNTHAU_LANDMARKS if source == "synthau" else SOURCES
        if landmarks not in allowed:
            raise ValueError(f"--data.landmarks must be one of {', '.join(allowed)} for "
                             f"--data.source {source}, got {landmarks!r}")
        if positives not in POSITIVES:
            raise ValueError(f"--data.positives must be one of {POSITIVES}, got {positives!r}")
        if positives == "clip" and (views < 2 or clip_window < 1):
            raise ValueError("--data.positives clip needs --data.views >= 2 and "
                             f"--data.clip_window >= 1; got {views} and {clip_window}")
        if source != "synthau" and not Path(source).expanduser().is_dir():
            raise FileNotFoundError(f"--data.source {source} is neither 'synthau' nor an existing "
                                    "folder of face images")
        if views < 1 or batch_size < 1 or image_size < 32:
            raise ValueError("need --data.views >= 1, --data.batch_size >= 1 and "
                             f"--data.image_size >= 32; got {views}, {batch_size}, {image_size}")
        _check_grouping(source, batch_size, faces_per_subject, synthau_subjects,
                        synthau_samples_per_subject)
        self.source = source
        self.image_size = image_size
        self.views = views
        self.batch_size = batch_size
        self.faces_per_subject = faces_per_subject
        self.subjects_per_batch = batch_size // faces_per_subject if faces_per_subject else 0
        self.num_workers = num_workers
        self.synthau_subjects = synthau_subjects
        self.samples_per_subject = synthau_samples_per_subject
        self.seed = seed
        self.positives = positives
        self.clip_window = clip_window
        self.landmarks = landmarks
        self.synthau_cache = synthau_cache_dir(synthau_cache)
        # built now so that a bad probe configuration fails before pretraining starts
        self._probe = make_probe_datamodule(probe_data.dataset, probe_data.manifest,
                                            probe_data.aus, probe_data.samples_per_subject,
                                            image_size, batch_size,
                                            num_workers, seed, self.synthau_cache,
                                            landmarks if source == "synthau" else AUTO)
        self._train: SynthAUDataset | ImageFolderDataset | None = None

    def prepare_data(self) -> None:
        """Fit and cache the landmarks of a folder without any, or of SynthAU's faces (one
        process per node; the probe's faces get theirs when the probe first runs)."""
        if self.source == "synthau":
            self.setup()
            assert isinstance(self._train, SynthAUDataset)
            self._train.prepare_landmarks("the SynthAU pool")
            return
        if self.landmarks == TEMPLATE:
            return
        root = Path(self.source).expanduser()
        if not folder_has_landmarks(root) and resolve_source(self.landmarks) == DLIB68:
            write_landmarks_sidecar(root, "cuda" if torch.cuda.is_available() else "cpu")

    def setup(self, stage: str | None = None) -> None:
        if self._train is not None:
            return
        transform = pretrain_transform(self.image_size, _transform_seed(self), normalize=False)
        if self.source == "synthau":
            self._train = SynthAUDataset(unlabeled_subjects(self.synthau_subjects),
                                         self.samples_per_subject, None, transform,
                                         seed=self.seed, views=self.views,
                                         cache_dir=self.synthau_cache,
                                         clip_views=self.positives == "clip",
                                         landmarks=self.landmarks,
                                         landmark_cache=landmark_cache_dir(self.synthau_cache))
            rank_zero_info(f"pretraining pool: SynthAU {self.synthau_subjects} subjects x "
                           f"{self.samples_per_subject} faces, rendered faces kept in "
                           f"{self.synthau_cache or '(nowhere: synthau_cache is null)'}, "
                           f"landmarks: {self._train.landmarks.source}")
        else:
            self._train = ImageFolderDataset(
                self.source, transform, views=self.views,
                clip_window=self.clip_window if self.positives == "clip" else 0)
        if len(self._train) < self.batch_size:
            raise ValueError(f"{len(self._train)} images is fewer than one batch of "
                             f"{self.batch_size}; lower --data.batch_size or add images")

    def train_dataloader(self) -> DataLoader:
        """Batches with image ``[B, V, 3, S, S]`` and landmarks ``[B, V, 68, 2]``; with
        grouping on, the ``B`` faces are ``subjects_per_batch`` runs of ``faces_per_subject``
        faces of one subject each."""
        self.setup()
        assert self._train is not None
        problem = self.person_ids_problem()
        if problem and self.positives == "clip":
            warnings.warn(f"clip positives need videos or subjects: {problem}; each image's "
                          "views come from that image alone", stacklevel=2)
        replicas = _replicas(self)
        sampler = self._grouped_sampler(replicas) if self.faces_per_subject else None
        # contrastive losses want full batches of negatives; a ragged last batch is dropped
        return make_loader(self._train, self.batch_size, self.num_workers, shuffle=True,
                           drop_last=True, seed=self.seed, replicas=replicas, sampler=sampler)

    def _grouped_sampler(self, replicas: tuple[int, int]) -> GroupedKeySampler:
        assert self._train is not None
        try:
            return GroupedKeySampler(self._train.groups(), self.subjects_per_batch,
                                     self.faces_per_subject, self.seed, *replicas)
        except ValueError as err:
            raise ValueError(f"subject-grouped batches of {self.source}: {err}. Change "
                             "--data.batch_size / --data.faces_per_subject, or set "
                             "--data.faces_per_subject 0 for random batches") from err

    def person_ids_problem(self) -> str | None:
        """Why the pool's faces carry no person id (``subject``), or None when they all do."""
        self.setup()
        return getattr(self._train, "person_ids_problem", None)

    def probe_datamodule(self) -> AUDataModule:
        """Labelled data for the linear probe (use its ``split_dataloader``: eval transforms)."""
        return self._probe


def make_probe_datamodule(dataset: str, manifest: str | None, aus: list[str] | str | None,
                     samples_per_subject: int, image_size: int, batch_size: int,
                     num_workers: int, seed: int, synthau_cache: str | None,
                     landmarks: str = AUTO) -> AUDataModule:
    """The linear probe's labelled data (``UnlabeledFaceDataModule``'s ``probe``, ``ProbeData``):
    SynthAU rendered with ``samples_per_subject`` faces per subject and ``landmarks``, or the
    manifest of a ``csv`` / ``bp4d`` / ``disfa`` source."""
    source = LABELLED_DATAMODULES.get(dataset.lower())
    if source is None:
        raise ValueError(f"--data.probe.dataset must be one of {', '.join(LABELLED_DATAMODULES)}, "
                         f"got {dataset!r}")
    common = dict(aus=aus, image_size=image_size, batch_size=batch_size, num_workers=num_workers,
                  seed=seed)
    if source is SynthAUDataModule:
        if manifest is not None:
            raise ValueError("--data.probe.dataset synthau renders its own probe data but "
                             "--data.probe.manifest was given; set --data.probe.dataset csv to "
                             "probe on a manifest")
        return SynthAUDataModule(synthau_samples_per_subject=samples_per_subject,
                                 synthau_eval_samples_per_subject=samples_per_subject,
                                 synthau_cache=synthau_cache, landmarks=landmarks, **common)
    if manifest is None:
        raise ValueError(f"--data.probe.dataset {dataset} needs --data.probe.manifest <path to a "
                         "labelled manifest (CSV or JSON)>")
    return source(manifest=manifest, **common)


def _check_grouping(source: str, batch_size: int, faces_per_subject: int, synthau_subjects: int,
                    synthau_samples_per_subject: int) -> None:
    """Fail at construction on a grouping or SynthAU pool that cannot make a batch."""
    if faces_per_subject < 0 or synthau_subjects < 1 or synthau_samples_per_subject < 1:
        raise ValueError("need --data.faces_per_subject >= 0, --data.synthau_subjects >= 1 and "
                         f"--data.synthau_samples_per_subject >= 1; got {faces_per_subject}, "
                         f"{synthau_subjects}, {synthau_samples_per_subject}")
    if not faces_per_subject:
        return
    if batch_size % faces_per_subject:
        raise ValueError(f"--data.batch_size {batch_size} is not a multiple of "
                         f"--data.faces_per_subject {faces_per_subject}: a batch holds "
                         "batch_size / faces_per_subject subjects x faces_per_subject faces; "
                         "change either, or set --data.faces_per_subject 0 for random batches")
    if source != "synthau":
        return
    if faces_per_subject > synthau_samples_per_subject:
        raise ValueError(f"--data.faces_per_subject {faces_per_subject} is more than the "
                         f"{synthau_samples_per_subject} faces per subject SynthAU renders "
                         "(--data.synthau_samples_per_subject); raise that or lower "
                         "--data.faces_per_subject")
    if batch_size // faces_per_subject > synthau_subjects:
        raise ValueError(f"a batch of --data.batch_size {batch_size} at --data.faces_per_subject "
                         f"{faces_per_subject} needs {batch_size // faces_per_subject} distinct "
                         f"subjects; --data.synthau_subjects is {synthau_subjects}")
