"""Torch datasets of face images: the SynthAU renderer, a labelled manifest, a folder of images.

Every item is a dict: ``image`` FloatTensor ``[3, S, S]`` (``[V, 3, S, S]`` with ``views > 1``,
one independent transform draw per view), ``landmarks`` ``[68, 2]`` (``[V, 68, 2]``), and for
labelled data ``labels`` FloatTensor ``[A]`` (unknown -> 0), ``label_mask`` BoolTensor ``[A]``
and ``subject`` str. The default collate turns these into a batch.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from aukit.au import ALL_AUS, NUM_LANDMARKS, au_numbers
from aukit.au_maps import canonical_landmarks
from aukit.data.manifest import (
    Manifest,
    ManifestError,
    default_image_check_cache,
    image_problem,
    load_landmarks,
    unreadable_images,
)
from aukit.data.synthau import SynthAU
from aukit.data.synthau_landmarks import SynthAULandmarks
from aukit.landmarks import AUTO

if TYPE_CHECKING:
    from aukit.data.crop_store import CropStore

# (image uint8 [H, W, 3] RGB, landmarks float32 [68, 2]) -> {"image": [3, S, S], "landmarks": ...}
Transform = Callable[[np.ndarray, np.ndarray], dict[str, torch.Tensor]]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")
LANDMARKS_SIDECAR = "landmarks.json"
SUBJECTS_SIDECAR = "subjects.csv"


def read_rgb(path: Path, where: str) -> np.ndarray:
    """An image as uint8 ``[H, W, 3]`` RGB; ``where`` says where it was listed, for the error."""
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise OSError(f"cannot read image {path} ({where}): the file is missing, not an image or "
                      "corrupt; re-export it as JPEG/PNG or remove it")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def apply_views(transform: Transform, frames: Sequence[tuple[np.ndarray, np.ndarray]],
                views: int, key: int | None = None) -> dict[str, torch.Tensor]:
    """``views`` independent transform draws, stacked on a view axis only when ``views > 1``.

    ``frames`` are ``(image, landmarks)`` pairs: one image, or frames of one clip (view ``v``
    transforms frame ``v % len(frames)``). A sample ``key`` (from
    ``aukit.data.sampling.EpochKeySampler``) seeds the draws, so the same key always gives the
    same views.
    """
    if key is not None and hasattr(transform, "reseed_for"):
        transform.reseed_for(key)
    if views == 1:
        return dict(transform(*frames[0]))
    draws = [transform(*frames[v % len(frames)]) for v in range(views)]
    return {key: torch.stack([d[key] for d in draws]) for key in ("image", "landmarks")}


def _check_views(views: int) -> int:
    if views < 1:
        raise ValueError(f"views must be >= 1, got {views}")
    return views


class SynthAUDataset(Dataset):
    """Rendered SynthAU faces: item ``i`` is sample ``i % samples_per_subject`` of subject
    ``subjects[i // samples_per_subject]``. ``aus=None`` leaves labels out (pretraining).
    ``clip_views`` makes view ``v`` frame ``v`` of the sample's clip (same expression, new pose
    and light) instead of another augmentation of one image. ``landmarks`` says which landmarks
    the faces come with (``aukit.data.synthau_landmarks``: by default those the toolkit's
    landmark stage finds on each render, kept in ``landmark_cache``; ``exact``, the renderer's,
    is an oracle)."""

    def __init__(self, subjects: Sequence[int], samples_per_subject: int,
                 aus: Sequence[int] | None, transform: Transform, seed: int = 0,
                 views: int = 1, cache_dir: str | None = None, clip_views: bool = False,
                 landmarks: str = AUTO, landmark_cache: str | None = None) -> None:
        if not subjects or samples_per_subject < 1:
            raise ValueError(f"SynthAUDataset needs subjects and samples_per_subject >= 1, got "
                             f"{len(subjects)} subjects x {samples_per_subject} samples")
        self.subjects = list(subjects)
        self.samples_per_subject = samples_per_subject
        self.aus = None if aus is None else au_numbers(aus)
        self.columns = None if self.aus is None else [ALL_AUS.index(a) for a in self.aus]
        self.transform = transform
        self.views = _check_views(views)
        self.clip_views = clip_views
        self.synth = SynthAU(seed=seed, cache_dir=cache_dir)
        self.landmarks = SynthAULandmarks(self.synth, landmarks, landmark_cache)

    def __len__(self) -> int:
        return len(self.subjects) * self.samples_per_subject

    def groups(self) -> list[str]:
        """The subject id of every item (e.g. ``"S007"``), for subject-grouped batches."""
        return [self.synth.subject_id(s) for s in self.subjects
                for _ in range(self.samples_per_subject)]

    def locate(self, i: int) -> tuple[int, int]:
        """(subject, index within subject) of item ``i``."""
        return self.subjects[i // self.samples_per_subject], i % self.samples_per_subject

    def faces(self) -> list[tuple[int, int, int]]:
        """The (subject, index, frame) of every rendered face the items read."""
        frames = range(self.views) if self.clip_views else range(1)
        return [(*self.locate(i), f) for i in range(len(self)) for f in frames]

    def prepare_landmarks(self, what: str = "SynthAU faces") -> dict[str, int]:
        """Finds and caches the landmarks of every face not cached yet (a progress bar; see
        ``SynthAULandmarks.prepare``)."""
        return self.landmarks.prepare(self.faces(), what)

    def _labels(self, sample: dict) -> np.ndarray:
        return sample["labels"][self.columns].astype(np.float32)  # [17] -> [A]

    def raw_labels(self, i: int) -> np.ndarray:
        """Binary labels ``[A]`` of item ``i`` (no rendering)."""
        return self.synth.labels(*self.locate(i))[self.columns].astype(np.float32)

    def _frame(self, subject: int, index: int, frame: int) -> tuple[dict, tuple]:
        sample = self.synth.sample(subject, index, frame)
        return sample, (sample["image"], self.landmarks((subject, index, frame), sample))

    def __getitem__(self, key: int) -> dict:
        subject, index = self.locate(key % len(self))
        sample, first = self._frame(subject, index, 0)
        frames = [first]
        if self.clip_views:
            frames += [self._frame(subject, index, v)[1] for v in range(1, self.views)]
        item = apply_views(self.transform, frames, self.views, key)
        if self.columns is not None:
            item["labels"] = torch.from_numpy(self._labels(sample))
            item["label_mask"] = torch.ones(len(self.columns), dtype=torch.bool)
        item["subject"] = str(sample["subject"])
        return item


class ManifestDataset(Dataset):
    """The rows of a labelled ``Manifest``, read with OpenCV, or from a ``CropStore`` of the
    same images (decoded once, memory-mapped) when ``store`` is given."""

    def __init__(self, manifest: Manifest, transform: Transform, views: int = 1,
                 store: CropStore | None = None) -> None:
        if store is not None:
            store.check_covers(manifest)
        self.manifest = manifest
        self.transform = transform
        self.views = _check_views(views)
        self.store = store

    def __len__(self) -> int:
        return len(self.manifest)

    def groups(self) -> list[str]:
        """The manifest's ``subject`` of every row, for subject-grouped batches."""
        return list(self.manifest.subjects)

    def __getitem__(self, key: int) -> dict:
        m, i = self.manifest, key % len(self)
        if self.store is not None:
            image, landmarks = self.store.read(m.images[i])
        else:
            image = read_rgb(m.images[i], f"listed in {m.row_label(i)}")
            landmarks = (load_landmarks(m.landmarks[i]) if m.landmarks[i] is not None
                         else canonical_landmarks(image.shape[:2]))
        item = apply_views(self.transform, [(image, landmarks)], self.views, key)
        item["labels"] = torch.from_numpy(m.labels[i])
        item["label_mask"] = torch.from_numpy(m.mask[i])
        item["subject"] = m.subjects[i]
        return item


class ImageFolderDataset(Dataset):
    """Every image under ``root`` (recursive, sorted), unlabelled, for pretraining.

    Landmarks come from ``root/landmarks.json`` (``{relative image path: [[x, y] * 68]}``), else
    from ``<image stem>.npy`` / ``.json`` next to the image, else the canonical template. Each
    image's group (subject or video, see ``groups``) comes from ``root/subjects.csv`` (columns
    ``image,subject``, image paths relative to the root), else from its first-level sub-folder.
    With ``clip_window`` ``w > 0`` the views after the first come from a neighbouring image of
    the same group, at most ``w`` images away in sorted order (a nearby video frame). Items
    carry their group as ``subject`` where every image has one (``person_ids_problem`` says
    why not otherwise), for the losses that compare a person's faces.
    """

    def __init__(self, root: str | os.PathLike, transform: Transform, views: int = 2,
                 clip_window: int = 0) -> None:
        self.root = Path(root).expanduser()
        self.images = folder_images(self.root)
        self._check_images()
        self.sidecar = self._read_sidecar()
        self.transform = transform
        self.views = _check_views(views)
        self.clip_window = clip_window
        try:
            self._subjects: list[str] | None = self.groups()
            self.person_ids_problem: str | None = None
        except ManifestError:  # a subjects.csv that cannot be read is refused, not ignored
            raise
        except ValueError as err:
            self._subjects, self.person_ids_problem = None, str(err)
        self._neighbours = self._clip_neighbours() if clip_window > 0 else None

    def _clip_neighbours(self) -> list[list[int]]:
        """For each image, the indices of the other images of its group within ``clip_window``
        places of it (itself when it is alone)."""
        # no videos to take neighbours from: each image pairs itself (the data module says so)
        groups = self._subjects or [str(i) for i in range(len(self.images))]
        members: dict[str, list[int]] = {}
        for i, group in enumerate(groups):
            members.setdefault(group, []).append(i)
        neighbours: list[list[int]] = [[] for _ in self.images]
        w = self.clip_window
        for run in members.values():
            for pos, i in enumerate(run):
                near = run[max(0, pos - w):pos] + run[pos + 1:pos + 1 + w]
                neighbours[i] = near or [i]
        return neighbours

    def _check_images(self) -> None:
        """Refuses, before anything trains, images that will not decode or are too small to be
        face crops (headers only, verdicts cached: ``unreadable_images``)."""
        bad = unreadable_images(self.images, default_image_check_cache())
        if bad:
            listed = [image_problem(path, reason, "remove it")[1]
                      for path, reason in sorted(bad.items())]
            more = f"\n  ... and {len(listed) - 5} more" if len(listed) > 5 else ""
            raise ManifestError(f"{len(bad)} of the {len(self.images)} images under {self.root} "
                                "cannot be used:\n  " + "\n  ".join(listed[:5]) + more)

    def _read_sidecar(self) -> dict[str, np.ndarray]:
        path = self.root / LANDMARKS_SIDECAR
        if not path.is_file():
            return {}
        try:
            entries = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise ManifestError(f"landmarks sidecar {path} is not valid JSON: {err}") from err
        sidecar = {}
        for key, points in entries.items():
            points = np.asarray(points, dtype=np.float32)
            if points.shape != (NUM_LANDMARKS, 2):
                raise ManifestError(f"landmarks sidecar {path}: entry {key!r} has shape "
                                    f"{points.shape}; expected ({NUM_LANDMARKS}, 2) pixel x, y")
            sidecar[Path(key).as_posix()] = points
        return sidecar

    def __len__(self) -> int:
        return len(self.images)

    def groups(self) -> list[str]:
        """The subject (or video) of every image: its ``subjects.csv`` row, else its first-level
        sub-folder. Raises if an image has neither: it cannot be put in a subject group."""
        relative = [p.relative_to(self.root).as_posix() for p in self.images]
        sidecar = self.root / SUBJECTS_SIDECAR
        if sidecar.is_file():
            listed = _read_subjects(sidecar)
            missing = [r for r in relative if r not in listed]
            if missing:
                raise ValueError(f"{sidecar} lists no subject for {len(missing)} of "
                                 f"{len(relative)} images, e.g. {missing[:3]}; add a row "
                                 "'<image path relative to the folder>,<subject>' for each")
            return [listed[r] for r in relative]
        loose = [r for r in relative if "/" not in r]
        if loose:
            raise ValueError(
                f"{len(loose)} images lie directly in {self.root} (e.g. {loose[:3]}), so their "
                f"subject is unknown: put a {SUBJECTS_SIDECAR} there (columns image,subject: "
                "each image's path relative to the folder and its person) or move each person's "
                "(or video's) images into a sub-folder of their own")
        return [r.split("/", 1)[0] for r in relative]

    def landmarks_for(self, path: Path, height: int, width: int) -> np.ndarray:
        """``[68, 2]`` landmarks of one image: sidecar, per-image file or template."""
        key = path.relative_to(self.root).as_posix()
        if key in self.sidecar:
            return self.sidecar[key]
        for suffix in (".npy", ".json"):
            if path.with_suffix(suffix).is_file():
                return load_landmarks(path.with_suffix(suffix))
        return canonical_landmarks((height, width))

    def _frame(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """(image ``[H, W, 3]`` uint8 RGB, landmarks ``[68, 2]``) of image ``index``."""
        path = self.images[index]
        image = read_rgb(path, f"found under {self.root}")
        return image, self.landmarks_for(path, *image.shape[:2])

    def __getitem__(self, key: int) -> dict:
        index = key % len(self)
        frames = [self._frame(index)]
        if self._neighbours is not None:
            rng = np.random.default_rng(key)
            frames += [self._frame(int(rng.choice(self._neighbours[index])))
                       for _ in range(1, self.views)]
        item = apply_views(self.transform, frames, self.views, key)
        if self._subjects is not None:
            item["subject"] = self._subjects[index]
        return item


def folder_images(root: Path) -> list[Path]:
    """Every image under the folder ``root`` (recursive, sorted); raises when there is none."""
    if not root.is_dir():
        raise FileNotFoundError(f"image folder {root} does not exist or is not a folder; "
                                "give a folder of aligned face images")
    images = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES
                    and p.is_file())
    if not images:
        raise FileNotFoundError(f"no images found under {root} (looked recursively for "
                                f"{', '.join(IMAGE_SUFFIXES)} files)")
    return images


def folder_has_landmarks(root: Path) -> bool:
    """True when images under ``root`` have landmarks ``ImageFolderDataset`` reads: a
    ``landmarks.json`` sidecar or any per-image ``.npy`` / ``.json`` file."""
    return (root / LANDMARKS_SIDECAR).is_file() or any(
        path.with_suffix(suffix).is_file() for path in folder_images(root)
        for suffix in (".npy", ".json"))


def _read_subjects(path: Path) -> dict[str, str]:
    """``{image path relative to the folder: subject}`` from a ``subjects.csv`` sidecar."""
    with path.open(newline="") as file:
        rows = csv.DictReader(file)
        if not {"image", "subject"} <= set(rows.fieldnames or ()):
            raise ManifestError(f"{path} needs the columns image,subject (a header row); it has "
                                f"{rows.fieldnames}")
        # a row without a subject counts as unlisted
        return {Path(row["image"].strip()).as_posix(): row["subject"].strip() for row in rows
                if row["image"] and row["subject"] and row["subject"].strip()}
