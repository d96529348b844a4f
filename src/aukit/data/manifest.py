"""The generic labelled manifest: one row per face image, with subject, AU labels and landmarks.

A manifest is a CSV file or a JSON list of records with the columns

- ``image``: image path, relative to the manifest's folder or absolute;
- ``subject``: subject identifier (splits are subject-exclusive);
- ``landmarks`` (optional): path to a ``.npy`` / ``.txt`` / ``.json`` file with 68 x 2 pixel
  points, or empty;
- one column per AU named like ``AU12``, values 0 / 1, or -1 / 9 for "unknown" (masked).

Other columns (``frame``, ``task`` ...) are allowed and ignored. Rows are numbered as a user sees
them: data row 1 is the first record (line 2 of a CSV, after the header).

``read_manifest(..., verify_images=True)`` (what ``ManifestDataModule`` does) also checks that every
image decodes, so a corrupt file fails (or is skipped) before training rather than hours in
(``unreadable_images``).
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import os
import re
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from aukit.au import NUM_LANDMARKS, au_numbers, parse_au

log = logging.getLogger(__name__)

POSITIVE, NEGATIVE = 1, 0
UNKNOWN_VALUES = (-1, 9)
UNKNOWN_WRITTEN = 9
LANDMARK_SUFFIXES = (".npy", ".txt", ".json")
# AU columns are recognised by name so that a typo such as AU99 or AU12_intensity is an error
# rather than a silently ignored column
_AU_COLUMN = re.compile(r"^\s*au\d", re.IGNORECASE)
_MAX_LISTED = 10
ENV_CACHE = "AUKIT_CACHE"
# bump when decode_problem changes what it accepts, so cached verdicts are not reused
_IMAGE_CHECK_VERSION = 2
# the smallest image side a face crop may have, and how unreadable_images marks a smaller one
MIN_FACE_SIZE = 32
TOO_SMALL = "too small: "
# formats whose header check below is trusted to agree with OpenCV's decoder; any other format
# is decoded by OpenCV itself, the reader training uses
_HEADER_CHECKED_FORMATS = ("JPEG", "PNG", "BMP")
_JPEG_END = b"\xff\xd9"


class ManifestError(ValueError):
    """A manifest that cannot be used as it is; the message names the file, row and fix."""


@dataclass
class Manifest:
    """A validated manifest held in memory.

    ``labels`` is ``[N, A]`` float32 in {0, 1} (unknown -> 0) and ``mask`` ``[N, A]`` bool
    (True = label known), with columns in the order of ``aus``. ``rows`` holds the 1-based data
    row each entry came from (for error messages); ``skipped`` one message per dropped row.
    """

    root: Path
    images: list[Path]
    subjects: list[str]
    labels: np.ndarray
    mask: np.ndarray
    landmarks: list[Path | None]
    aus: tuple[int, ...]
    source: Path
    rows: list[int] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        n = len(self.images)
        if not self.rows:
            self.rows = list(range(1, n + 1))
        lengths = {"images": n, "subjects": len(self.subjects), "landmarks": len(self.landmarks),
                   "rows": len(self.rows), "labels": len(self.labels), "mask": len(self.mask)}
        if len(set(lengths.values())) != 1:
            raise ManifestError(f"Manifest fields disagree in length: {lengths}")
        if self.labels.shape != (n, len(self.aus)) or self.mask.shape != self.labels.shape:
            raise ManifestError(f"labels {self.labels.shape} and mask {self.mask.shape} must both "
                                f"be [N, A] = {(n, len(self.aus))}")
        self.labels = self.labels.astype(np.float32, copy=False)
        self.mask = self.mask.astype(bool, copy=False)

    def __len__(self) -> int:
        return len(self.images)

    @property
    def au_names(self) -> list[str]:
        return [f"AU{n}" for n in self.aus]

    @property
    def subject_names(self) -> list[str]:
        """Distinct subjects in order of first appearance."""
        return list(dict.fromkeys(self.subjects))

    def row_label(self, i: int) -> str:
        """``"<file>, row <r>"`` for entry ``i``, for error messages."""
        return f"{self.source}, row {self.rows[i]}"

    def subset(self, subjects: Iterable[str]) -> Manifest:
        """The rows of the given subjects (order of the file kept)."""
        wanted = {str(s) for s in subjects}
        unknown = wanted - set(self.subjects)
        if unknown:
            raise ManifestError(f"subjects {sorted(unknown)} are not in {self.source}; "
                                f"it has {sorted(set(self.subjects))}")
        keep = [i for i, s in enumerate(self.subjects) if s in wanted]
        return Manifest(self.root, [self.images[i] for i in keep],
                        [self.subjects[i] for i in keep], self.labels[keep], self.mask[keep],
                        [self.landmarks[i] for i in keep], self.aus, self.source,
                        [self.rows[i] for i in keep], list(self.skipped))

    def write_csv(self, path: str | os.PathLike) -> None:
        """Write a CSV manifest that ``read_manifest`` reads back to the same content.

        Paths under the CSV's folder are written relative to it, others absolute.
        """
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        folder = path.parent.absolute()
        with_landmarks = any(p is not None for p in self.landmarks)
        header = ["image", "subject"] + (["landmarks"] if with_landmarks else []) + self.au_names
        with path.open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(header)
            for i in range(len(self)):
                values = np.where(self.mask[i], self.labels[i].astype(int), UNKNOWN_WRITTEN)
                lms = [_relative(self.landmarks[i], folder) if self.landmarks[i] else ""]
                writer.writerow([_relative(self.images[i], folder), self.subjects[i]]
                                + (lms if with_landmarks else []) + [str(v) for v in values])


def _relative(path: Path, folder: Path) -> str:
    path = path.absolute()
    return path.relative_to(folder).as_posix() if path.is_relative_to(folder) else str(path)


def load_landmarks(path: str | os.PathLike) -> np.ndarray:
    """68 landmarks ``[68, 2]`` float32 (pixel x, y) from a ``.npy``, ``.txt`` or ``.json`` file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"landmarks file {path} does not exist")
    suffix = path.suffix.lower()
    try:
        if suffix == ".npy":
            points = np.load(path)
        elif suffix == ".json":
            points = np.asarray(json.loads(path.read_text()), dtype=np.float32)
        elif suffix == ".txt":
            points = np.loadtxt(path.read_text().replace(",", " ").splitlines(), ndmin=2)
        else:
            raise ManifestError(f"landmarks file {path} has an unsupported type; "
                                f"use one of {', '.join(LANDMARK_SUFFIXES)}")
    except (ValueError, OSError) as err:
        if isinstance(err, ManifestError):
            raise
        raise ManifestError(f"cannot read landmarks file {path}: {err}") from err
    points = np.asarray(points, dtype=np.float32)
    if points.shape != (NUM_LANDMARKS, 2):
        raise ManifestError(f"landmarks file {path} holds an array of shape {points.shape}; "
                            f"expected {NUM_LANDMARKS} (x, y) points, shape ({NUM_LANDMARKS}, 2)")
    return points


def _read_records(path: Path) -> tuple[list[str], list[tuple[int, dict]]]:
    """Column names and ``(row number, record)`` pairs of a CSV or JSON manifest."""
    suffix = path.suffix.lower()
    if suffix == ".csv":
        with path.open(newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            columns = [c.strip() for c in reader.fieldnames or []]
            records = [(row, {k.strip(): v for k, v in r.items() if k is not None})
                       for row, r in enumerate(reader, start=1)]
        return columns, records
    if suffix == ".json":
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise ManifestError(f"manifest {path} is not valid JSON: {err}") from err
        if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
            raise ManifestError(f"manifest {path} must hold a JSON list of records "
                                '(objects like {"image": ..., "subject": ..., "AU12": 1})')
        columns = list(dict.fromkeys(k.strip() for r in data for k in r))
        return columns, [(row, {k.strip(): v for k, v in r.items()})
                         for row, r in enumerate(data, start=1)]
    raise ManifestError(f"manifest {path} has an unsupported type {suffix!r}; "
                        "write it as .csv or .json (a list of records)")


def _check_path(path: Path) -> None:
    if not path.is_file():
        raise FileNotFoundError(
            f"manifest {path} does not exist; give the path of a CSV or JSON manifest "
            "(columns image, subject, optional landmarks, AU1, AU2 ...)")


def _au_columns(path: Path, columns: Sequence[str]) -> dict[int, str]:
    """AU number -> column name for every AU column, with header errors raised."""
    lower = {c.lower(): c for c in columns}
    for required in ("image", "subject"):
        if required not in lower:
            what = "image path" if required == "image" else "subject id"
            raise ManifestError(f"manifest {path} has no {required!r} column (header: "
                                f"{', '.join(columns)}); add it or rename the column that "
                                f"holds the {what}")
    found: dict[int, str] = {}
    for column in columns:
        if not _AU_COLUMN.match(column):
            continue
        try:
            number = parse_au(column)
        except ValueError as err:
            raise ManifestError(f"manifest {path}, header: column {column!r} looks like an AU "
                                f"column but is not a known AU ({err}); rename it to the AU it "
                                "holds (e.g. AU12, with 0/1/9 values) or remove it") from err
        if number in found:
            raise ManifestError(f"manifest {path}, header: columns {found[number]!r} and "
                                f"{column!r} both hold AU{number}; keep one")
        found[number] = column
    if not found:
        raise ManifestError(f"manifest {path} has no AU columns (header: {', '.join(columns)}); "
                            "add columns named like AU1, AU12 with 0/1 labels")
    return found


def manifest_aus(path: str | os.PathLike) -> tuple[int, ...]:
    """The AUs a manifest labels, in column order, from its header alone."""
    path = Path(path)
    _check_path(path)
    columns, _ = _read_records(path) if path.suffix.lower() == ".json" else (_csv_header(path), [])
    return tuple(_au_columns(path, columns))


def _csv_header(path: Path) -> list[str]:
    with path.open(newline="", encoding="utf-8-sig") as f:
        return [c.strip() for c in next(csv.reader(f), [])]


def _label(value: object) -> float | None:
    """0 / 1 for a known label, None for unknown; ValueError for anything else."""
    number = float(value.strip()) if isinstance(value, str) else float(value)  # type: ignore
    if number in (POSITIVE, NEGATIVE):
        return number
    if number in UNKNOWN_VALUES:
        return None
    raise ValueError


def _cell(record: dict, column: str) -> str:
    value = record.get(column)
    return "" if value is None else str(value).strip()


def read_manifest(path: str | os.PathLike, aus: Sequence[int | str] | str | None = None,
                  skip_bad_rows: bool = False, verify_images: bool = False,
                  image_check_cache: str | os.PathLike | None = "auto") -> Manifest:
    """Read and validate a manifest.

    Args:
        path: the CSV or JSON manifest.
        aus: AUs to keep (names, numbers or a dataset name such as ``"bp4d"``); None = every AU
            column, in file order.
        skip_bad_rows: drop rows with problems (logged as a warning and listed in
            ``Manifest.skipped``) instead of raising.
        verify_images: also check that every image decodes (``unreadable_images``: headers, in
            parallel, thousands of JPEGs a second; a bad one is a row problem like a bad label).
        image_check_cache: folder for the image check's verdicts (``"auto"``:
            ``default_image_check_cache()``; None: check every time).
    """
    path = Path(path).expanduser()
    _check_path(path)
    columns, records = _read_records(path)
    found = _au_columns(path, columns)
    if not records:
        raise ManifestError(f"manifest {path} has no data rows; add one row per image")
    wanted = tuple(found) if aus is None else au_numbers(aus)
    missing = [f"AU{n}" for n in wanted if n not in found]
    if missing:
        raise ManifestError(f"manifest {path} has no column for {', '.join(missing)} (it labels "
                            f"{', '.join(f'AU{n}' for n in found)}); ask only for those or add "
                            "the columns")
    lower = {c.lower(): c for c in columns}
    columns_used = _Columns(lower["image"], lower["subject"], lower.get("landmarks"),
                            tuple(found[n] for n in wanted))
    root = path.parent.absolute()
    parsed = [_parse_row(record, row, columns_used, root) for row, record in records]
    if verify_images:
        existing = [e.image for e, problems in parsed
                    if not any(kind in ("missing image", "missing value") for kind, _ in problems)]
        cache = default_image_check_cache() if image_check_cache == "auto" else image_check_cache
        bad = unreadable_images(existing, cache)
        for entry, problems in parsed:
            if entry.image in bad:
                problems.append(image_problem(entry.image, bad[entry.image], "drop the row"))
    entries = [entry for entry, problems in parsed if not problems]
    skipped = _report(path, [(e.row, kind, message) for e, problems in parsed
                             for kind, message in problems], len(records), skip_bad_rows)
    if not entries:
        raise ManifestError(f"manifest {path}: every row was bad and skipped; see the warnings")
    return Manifest(root=root, images=[e.image for e in entries],
                    subjects=[e.subject for e in entries],
                    labels=np.array([e.labels for e in entries], dtype=np.float32),  # [N, A]
                    mask=np.array([e.known for e in entries], dtype=bool),
                    landmarks=[e.landmarks for e in entries], aus=wanted, source=path,
                    rows=[e.row for e in entries], skipped=skipped)


def default_image_check_cache() -> Path:
    """``$AUKIT_CACHE/image_checks`` when ``AUKIT_CACHE`` is set, else
    ``~/.cache/aukit/image_checks`` (next to the SynthAU and text caches)."""
    root = os.environ.get(ENV_CACHE)
    return (Path(root).expanduser() if root else Path.home() / ".cache" / "aukit") / "image_checks"


def unreadable_images(paths: Sequence[Path], cache_dir: str | os.PathLike | None = None,
                      workers: int | None = None) -> dict[Path, str]:
    """The images of ``paths`` that will not decode, or are smaller than ``MIN_FACE_SIZE`` on
    a side (their reason starts with ``TOO_SMALL``), each with the reason (``image_problem``
    words it for a user).

    Checked in a thread pool of ``workers`` (default: ``ThreadPoolExecutor``'s), the verdicts
    kept in ``cache_dir`` under a hash of every path with its size and modification time, so a
    second check of unchanged files only ``stat``s them; replacing or touching a file checks
    again. Files that cannot be ``stat``ed are reported as such.
    """
    paths = list(dict.fromkeys(Path(p) for p in paths))
    if not paths:
        return {}
    stats, bad = [], {}
    for image in paths:
        try:
            info = image.stat()
            stats.append(f"{image}\t{info.st_size}\t{info.st_mtime_ns}")
        except OSError as err:
            bad[image] = f"cannot stat it: {err}"
    key = hashlib.sha256("\n".join([f"version={_IMAGE_CHECK_VERSION}", *stats]).encode())
    cache = Path(cache_dir).expanduser() / f"{key.hexdigest()}.json" if cache_dir else None
    cached = _read_verdicts(cache)
    if cached is not None:
        return {**bad, **cached}
    start = time.perf_counter()
    todo = [p for p in paths if p not in bad]
    with ThreadPoolExecutor(workers) as pool:
        verdicts = dict(zip(todo, pool.map(decode_problem, todo), strict=True))
    bad.update({p: problem for p, problem in verdicts.items() if problem is not None})
    seconds = time.perf_counter() - start
    log.info("checked %d images in %.1f s (%.0f/s): %d unreadable", len(todo), seconds,
             len(todo) / max(seconds, 1e-9), len(bad))
    _write_verdicts(cache, bad)
    return bad


def _read_verdicts(cache: Path | None) -> dict[Path, str] | None:
    if cache is None or not cache.is_file():
        return None
    try:
        return {Path(p): reason for p, reason in json.loads(cache.read_text())["bad"].items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None  # a damaged cache entry is checked again


def _write_verdicts(cache: Path | None, bad: dict[Path, str]) -> None:
    if cache is None:
        return
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        partial = cache.with_suffix(f".{os.getpid()}.tmp")  # atomic: DDP ranks check together
        partial.write_text(json.dumps({"bad": {str(p): r for p, r in bad.items()}}))
        os.replace(partial, cache)
    except OSError as err:
        log.warning("could not cache the image check in %s (%s); the next run checks again",
                    cache.parent, err)


def image_problem(image: Path, reason: str, drop: str) -> tuple[str, str]:
    """(kind, message) of an ``unreadable_images`` verdict, the fix ending in ``drop``."""
    if reason.startswith(TOO_SMALL):
        return "tiny image", (f"image {image} is {reason[len(TOO_SMALL):]}, smaller than "
                              f"{MIN_FACE_SIZE} px: not a face-sized crop; re-crop the face "
                              f"larger or {drop}")
    return "unreadable image", (f"image {image} cannot be decoded ({reason}); re-export it as "
                                f"JPEG/PNG or {drop}")


def decode_problem(path: Path) -> str | None:
    """None if OpenCV (the training reader) will decode ``path`` and it is face-sized, else
    why not (an image smaller than ``MIN_FACE_SIZE`` on a side: ``TOO_SMALL`` and its size).

    Header checks, much faster than a 1/8-scale decode (docs/benchmarks.md, "Image checks"),
    which alone misses truncated JPEGs: PIL's ``verify`` parses the header and, for PNG,
    checks every chunk's CRC to the end. A JPEG must end with its end-of-image marker, which a
    truncated file lacks; one without it (or with bytes after it) is decoded at 1/8 scale by PIL,
    which raises on truncated data where OpenCV only warns and fills the rest grey. Any other
    format, and any file PIL rejects, is decoded by OpenCV at 1/8 scale.
    """
    try:
        with Image.open(path) as image:
            kind, (width, height) = image.format, image.size
            image.verify()
    except Exception as err:  # noqa: BLE001  # PIL raises many types for broken files
        kind, problem = None, f"{type(err).__name__}: {err}"
    else:
        problem = None
        if min(width, height) < MIN_FACE_SIZE:
            return f"{TOO_SMALL}{width}x{height} px"
    if kind == "JPEG" and not _has_jpeg_end(path):
        try:
            with Image.open(path) as image:
                image.draft("L", (max(1, image.width // 8), max(1, image.height // 8)))
                image.load()
        except Exception as err:  # noqa: BLE001
            return f"truncated or corrupt JPEG: {err}"
    if kind in _HEADER_CHECKED_FORMATS:
        return None
    if cv2.imread(str(path), cv2.IMREAD_REDUCED_GRAYSCALE_8) is None:
        return problem or "OpenCV cannot decode it"
    return None


def _has_jpeg_end(path: Path) -> bool:
    try:
        with path.open("rb") as f:
            f.seek(-2, os.SEEK_END)
            return f.read(2) == _JPEG_END
    except OSError:
        return False  # decoded next, which says what is wrong


@dataclass(frozen=True)
class _Columns:
    image: str
    subject: str
    landmarks: str | None
    aus: tuple[str, ...]


@dataclass(frozen=True)
class _Entry:
    row: int
    image: Path
    subject: str
    landmarks: Path | None
    labels: list[float]
    known: list[bool]


def _parse_row(record: dict, row: int, columns: _Columns,
               root: Path) -> tuple[_Entry, list[tuple[str, str]]]:
    """One record as an entry, and its ``(kind, message)`` problems (none when it is valid)."""
    problems: list[tuple[str, str]] = []
    image_text, subject = _cell(record, columns.image), _cell(record, columns.subject)
    if not image_text or not subject:
        problems.append(("missing value", "empty 'image' or 'subject'; fill it in"))
    image = root / Path(image_text).expanduser()
    if image_text and not image.is_file():
        problems.append(("missing image", f"image {image} does not exist; fix the path "
                         "(relative to the manifest's folder, or absolute)"))
    landmark_text = _cell(record, columns.landmarks) if columns.landmarks else ""
    landmarks = root / Path(landmark_text).expanduser() if landmark_text else None
    if landmarks is not None:
        try:
            load_landmarks(landmarks)
        except (ManifestError, FileNotFoundError) as err:
            problems.append(("bad landmarks file", f"{err}; fix the file or leave the "
                             "'landmarks' cell empty"))
    labels, known = [], []
    for column in columns.aus:
        try:
            label = _label(record.get(column, ""))
        except (ValueError, TypeError):
            problems.append(("bad label", f"{column} = {record.get(column)!r} is not a label; "
                             "use 0 or 1, and -1 or 9 for unknown"))
            label = None
        labels.append(label or 0.0)
        known.append(label is not None)
    return _Entry(row, image, subject, landmarks, labels, known), problems


def _report(path: Path, problems: list[tuple[int, str, str]], total: int,
            skip_bad_rows: bool) -> list[str]:
    """Raise on bad rows, or (skip_bad_rows) log and return one message per skipped row."""
    if not problems:
        return []
    by_row: dict[int, list[str]] = {}
    for row, _, message in problems:
        by_row.setdefault(row, []).append(message)
    # a CSV's header is line 1, so data row r is line r + 1 in an editor or spreadsheet
    line = " (line {})" if path.suffix.lower() == ".csv" else ""
    messages = [f"{path}, row {row}{line.format(row + 1)}: {'; '.join(m)}"
                for row, m in sorted(by_row.items())]
    listed = "\n  ".join(messages[:_MAX_LISTED])
    more = f"\n  ... and {len(messages) - _MAX_LISTED} more" if len(messages) > _MAX_LISTED else ""
    kinds = ", ".join(f"{n} {kind}{'s' if n > 1 else ''}"
                      for kind, n in Counter(kind for _, kind, _ in problems).items())
    if not skip_bad_rows:
        raise ManifestError(f"manifest {path} has {len(messages)} bad row(s) of {total} "
                            f"({kinds}):\n  {listed}{more}\nfix them, or drop them with "
                            "--data.skip_bad_rows true (skip_bad_rows=True)")
    log.warning("skipped %d of %d rows of %s: %s; see Manifest.skipped:\n  %s%s", len(messages),
                total, path, kinds, listed, more)
    return messages
