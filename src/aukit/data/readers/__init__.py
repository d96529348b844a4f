"""Readers for the raw layouts users have (BP4D, DISFA, ME-GraphAU-style lists) -> manifests.

A reader returns a ``RawDataset``: one ``RawFrame`` per labelled frame whose image (a file, or a
frame of a video) exists, plus the ``Problems`` it met, counted by kind and listed by name.
``dataset_manifest`` turns a raw root (or a ``prepare`` output folder) into a cached generic
manifest; ``manifest_hash`` (sha256 of the manifest file) identifies the data of a run.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from aukit.data.manifest import Manifest

log = logging.getLogger(__name__)

UNKNOWN = -1
PREPARED_MANIFEST = "manifest.csv"  # what ``prepare`` writes into its output folder
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")
_LISTED = 10
# bumped when a reader changes what it produces, so stale caches are not reused
READER_VERSION = 2


@dataclass(frozen=True)
class RawFrame:
    """One labelled frame: ``labels`` per AU (1, 0 or ``UNKNOWN``); the pixels are ``image``, or
    frame ``video_index`` (0-based) of ``video``."""

    subject: str
    sequence: str
    frame: int
    labels: tuple[int, ...]
    image: Path | None = None
    video: Path | None = None
    video_index: int = -1


@dataclass
class Problems:
    """Problems met while reading raw data: ``{kind: [names]}``."""

    items: dict[str, list[str]] = field(default_factory=dict)

    def add(self, kind: str, name: str) -> None:
        self.items.setdefault(kind, []).append(name)

    def __bool__(self) -> bool:
        return bool(self.items)

    def report(self) -> str:
        """One line per kind (count, then the first names), or ``"no problems"``."""
        if not self.items:
            return "no problems"
        lines = []
        for kind, names in self.items.items():
            more = f" ... and {len(names) - _LISTED} more" if len(names) > _LISTED else ""
            lines.append(f"{kind}: {len(names)} ({'; '.join(names[:_LISTED])}{more})")
        return "\n".join(lines)


@dataclass
class RawDataset:
    """What a reader found under ``root``. ``notes``: lines for the summaries on choices the
    reader made (e.g. DISFA's frame numbering); ``settings``: those choices as values, which
    decide the pixels of a frame (``prepare`` refuses to resume an output made with others)."""

    name: str
    root: Path
    aus: tuple[int, ...]
    frames: list[RawFrame]
    problems: Problems
    notes: list[str] = field(default_factory=list)
    settings: dict[str, int] = field(default_factory=dict)

    def manifest(self, source: Path) -> Manifest:
        """The frames as a ``Manifest`` (``source`` names it in messages); needs image files."""
        in_video = [f for f in self.frames if f.image is None]
        if in_video:
            raise ValueError(
                f"{len(in_video)} {self.name} frames are only inside videos (e.g. "
                f"{in_video[0].video}); "
                f"extract and align them first: aukit-prepare --dataset {self.name} "
                f"--data-root {self.root} --out <folder>, then use that folder as data_root")
        labels = np.array([f.labels for f in self.frames], dtype=np.int64).reshape(
            len(self.frames), len(self.aus))  # [N, A]
        known = labels != UNKNOWN
        return Manifest(self.root, [f.image for f in self.frames],  # type: ignore[misc]
                        [f.subject for f in self.frames], np.where(known, labels, 0), known,
                        [None] * len(self.frames), self.aus, source)


def frame_number_files(folder: Path) -> dict[int, Path]:
    """``{frame number: image}`` for images named by a number, whatever the zero-padding."""
    found: dict[int, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.suffix.lower() in IMAGE_SUFFIXES and path.stem.isdigit():
            found.setdefault(int(path.stem), path)
    return found


def frame_ranges(frames: Iterable[int]) -> str:
    """``"1-3, 7"`` for frames 1, 2, 3, 7: compact names for problem reports."""
    ordered = sorted(frames)
    spans: list[str] = []
    start = prev = None
    for f in [*ordered, None]:
        if start is not None and (f is None or f != prev + 1):
            spans.append(f"{start}" if start == prev else f"{start}-{prev}")
            start = None
        if f is not None and start is None:
            start = f
        prev = f
    return ", ".join(spans)


def read_raw(dataset: str, root: str | os.PathLike, **options) -> RawDataset:
    """Run the reader of ``dataset`` (``"bp4d"`` or ``"disfa"``) on a raw root."""
    from aukit.data.readers.bp4d import read_bp4d
    from aukit.data.readers.disfa import read_disfa

    readers = {"bp4d": read_bp4d, "disfa": read_disfa}
    if dataset not in readers:
        raise ValueError(f"no raw reader for {dataset!r}; choose one of {sorted(readers)}")
    return readers[dataset](root, **options)


def manifest_hash(path: str | os.PathLike) -> str:
    """sha256 of a manifest file's bytes: the same hash means the same frames and labels."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def manifest_summary(manifest: Manifest) -> str:
    """Subjects, frames and per-AU base rates (over known labels) with the unknown share."""
    known = manifest.mask.sum(0)
    rates = (manifest.labels * manifest.mask).sum(0) / np.maximum(known, 1)
    unknown = 1 - known / max(len(manifest), 1)
    per_au = " ".join(f"{n} {r:.3f}" + (f" ({u:.0%} unknown)" if u else "")
                      for n, r, u in zip(manifest.au_names, rates, unknown, strict=True))
    return (f"{manifest.source}: {len(manifest.subject_names)} subjects, {len(manifest)} frames\n"
            f"base rates: {per_au}")


def _cache_key(dataset: str, root: Path, options: dict) -> str:
    """Hash of what a reader's output depends on: the label files and frame folders (path,
    size, mtime) plus the reader options and version."""
    digest = hashlib.sha256(json.dumps([dataset, READER_VERSION, options], sort_keys=True,
                                       default=str).encode())
    for path in sorted(root.rglob("*")):
        if path.name.startswith(".aukit") or path.suffix.lower() in IMAGE_SUFFIXES:
            continue  # image files are covered by their folders' mtimes
        stat = path.stat()
        digest.update(f"{path.relative_to(root)}|{stat.st_size}|{stat.st_mtime_ns}".encode())
    return digest.hexdigest()[:16]


def dataset_manifest(dataset: str, data_root: str | os.PathLike,
                     cache_dir: str | os.PathLike | None = None, **options) -> Path:
    """The manifest of ``data_root``: its ``manifest.csv`` when it is a ``prepare`` output folder,
    else the raw reader's output, cached as ``<data_root>/.aukit-manifest-<dataset>-<key>.csv``
    (or in ``cache_dir`` when given, e.g. for a read-only root). Prints the summary and the
    problems when it builds one."""
    root = Path(data_root).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"data_root {root} is not a folder; give the raw {dataset} root "
                                "or a folder written by aukit-prepare")
    if (root / PREPARED_MANIFEST).is_file():
        return root / PREPARED_MANIFEST
    folder = Path(cache_dir).expanduser() if cache_dir else root
    path = folder / f".aukit-manifest-{dataset}-{_cache_key(dataset, root, options)}.csv"
    if path.is_file():
        return path
    raw = read_raw(dataset, root, **options)
    if not raw.frames:
        raise ValueError(f"no usable {dataset} frames under {root}:\n{raw.problems.report()}")
    manifest = raw.manifest(path)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    manifest.write_csv(tmp)
    tmp.replace(path)  # atomic, so parallel ranks never read half a file
    (path.with_suffix(".problems.txt")).write_text(raw.problems.report() + "\n")
    print(f"{dataset} manifest {path}\n{manifest_summary(manifest)}\n"
          + "".join(f"{note}\n" for note in raw.notes)
          + f"problems:\n{raw.problems.report()}\nmanifest sha256 {manifest_hash(path)}")
    return path

