"""BP4D raw layout: ``AUCoding/AU_OCC/<subject>_<task>.csv`` and ``<subject>/<task>/<frame>.jpg``.

An occurrence CSV has the frame number in its first column, then one column per coded AU named
``1``, ``2`` ... or ``AU1`` ... with values 0 / 1 and 9 for "not coded" (masked). Columns of
other AUs are ignored; an AU we need but the file lacks is unknown for that file (masked and
reported). Frame images may be zero-padded any way (``12.jpg``, ``0012.jpg``).
"""

from __future__ import annotations

import csv
import os
import re
from pathlib import Path

from aukit.au import au_numbers
from aukit.data.readers import (
    UNKNOWN,
    Problems,
    RawDataset,
    RawFrame,
    frame_number_files,
    frame_ranges,
)

LABEL_DIR = Path("AUCoding") / "AU_OCC"
# frame folders sit in the root itself or in the folder the BP4D release unpacks to
FRAME_DIRS = (".", "BP4D-training", "BP4D_training")
_AU_HEADER = re.compile(r"^(?:au)?0*(\d+)$", re.IGNORECASE)
_SUBJECT = re.compile(r"^[FM]\d{3}$")


def _frames_root(root: Path, frames_root: str | os.PathLike | None) -> Path:
    if frames_root is not None:
        return Path(frames_root).expanduser()
    for name in FRAME_DIRS:
        if any(_SUBJECT.match(p.name) for p in (root / name).glob("*") if p.is_dir()):
            return root / name
    return root


def read_occurrence_csv(path: Path, aus: tuple[int, ...],
                        problems: Problems) -> dict[int, tuple[int, ...]]:
    """``{frame: labels}`` of one AU_OCC file; bad cells become unknown and are reported."""
    with path.open(newline="", encoding="utf-8-sig") as f:
        rows = list(csv.reader(f))
    if not rows:
        problems.add("empty label files", path.name)
        return {}
    columns: dict[int, int] = {}
    for index, name in enumerate(rows[0][1:], start=1):
        match = _AU_HEADER.match(name.strip())
        if match is None:
            problems.add("label columns that are not AUs (ignored)", f"{path.name}: {name!r}")
        elif int(match.group(1)) in aus:
            columns[int(match.group(1))] = index
    lacking = [n for n in aus if n not in columns]
    if lacking:
        problems.add("label files without some AU columns (those AUs masked)",
                     f"{path.name}: {', '.join(f'AU{n}' for n in lacking)}")
    table: dict[int, tuple[int, ...]] = {}
    bad_values = 0
    for line, row in enumerate(rows[1:], start=2):
        try:
            frame = int(float(row[0]))
        except (ValueError, IndexError):
            problems.add("label rows without a frame number (skipped)", f"{path.name}:{line}")
            continue
        if frame in table:
            problems.add("repeated label rows (first kept)", f"{path.name}: frame {frame}")
            continue
        labels = []
        for n in aus:
            cell = row[columns[n]].strip() if n in columns and columns[n] < len(row) else "9"
            value = {"0": 0, "1": 1, "9": UNKNOWN}.get(cell.removesuffix(".0"))
            bad_values += value is None
            labels.append(UNKNOWN if value is None else value)
        table[frame] = tuple(labels)
    if bad_values:
        problems.add("label values other than 0 / 1 / 9 (masked)", f"{path.name}: {bad_values}")
    return table


def read_bp4d(root: str | os.PathLike, frames_root: str | os.PathLike | None = None,
              aus: tuple[int, ...] | str = "bp4d") -> RawDataset:
    """Every labelled BP4D frame under ``root`` whose image exists.

    Args:
        root: the folder holding ``AUCoding/AU_OCC``.
        frames_root: the folder of ``<subject>/<task>/`` frame folders (default: ``root`` or
            ``root/BP4D-training``).
        aus: the AUs to read (default: the 12 standard BP4D AUs).
    """
    root = Path(root).expanduser()
    aus = au_numbers(aus)
    label_dir = root / LABEL_DIR
    files = sorted(label_dir.glob("*.csv")) if label_dir.is_dir() else []
    if not files:
        raise FileNotFoundError(f"no BP4D occurrence files {label_dir}/<subject>_<task>.csv; "
                                "give the BP4D root (the folder holding AUCoding/)")
    images_root = _frames_root(root, frames_root)
    problems, frames, labelled = Problems(), [], set()
    for path in files:
        subject, _, task = path.stem.partition("_")
        if not task:
            problems.add("label files not named <subject>_<task>.csv (skipped)", path.name)
            continue
        labelled.add((subject, task))
        table = read_occurrence_csv(path, aus, problems)
        folder = images_root / subject / task
        if not folder.parent.is_dir():
            problems.add("missing subject folders (labels skipped)", f"{subject} ({path.name})")
            continue
        if not folder.is_dir():
            problems.add("missing task folders (labels skipped)", f"{subject}/{task}")
            continue
        images = frame_number_files(folder)
        if absent := sorted(set(table) - set(images)):
            problems.add("label rows for frames that do not exist (skipped)",
                         f"{subject}/{task}: {len(absent)} frames {frame_ranges(absent)}")
        if unlabelled := sorted(set(images) - set(table)):
            problems.add("frames without labels (not used)",
                         f"{subject}/{task}: {len(unlabelled)} frames {frame_ranges(unlabelled)}")
        frames += [RawFrame(subject, task, f, table[f], images[f])
                   for f in sorted(set(table) & set(images))]
    for folder in sorted(images_root.glob("*/*")):
        if folder.is_dir() and _SUBJECT.match(folder.parent.name) \
                and (folder.parent.name, folder.name) not in labelled:
            problems.add("frame folders without a label file (not used)",
                         f"{folder.parent.name}/{folder.name}")
    return RawDataset("bp4d", root, aus, frames, problems)
