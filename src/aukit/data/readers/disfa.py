"""DISFA raw layout: ``ActionUnit_Labels/SNxxx/SNxxx_auN.txt`` intensity files, and left-camera
videos ``Videos_LeftCamera/LeftVideoSNxxx_comp.avi`` or already-extracted frames.

Each label line is ``frame,intensity`` with 1-based frames and intensities 0-5; an AU is present
when its intensity is >= 2 (``PRESENT_INTENSITY``). Label frame n is video frame n - 1 (0-based
decoding order). Extracted frames ``<frames_root>/SNxxx/<number>.jpg`` are numbered from 0
(ME-GraphAU / JAA-Net extraction: label frame n is image n - 1) or from 1 (image n); a frame 0
in any subject folder means 0-based, unless ``frame_offset`` says which.
"""

from __future__ import annotations

import os
from pathlib import Path

import cv2

from aukit.au import au_numbers
from aukit.data.readers import (
    UNKNOWN,
    Problems,
    RawDataset,
    RawFrame,
    frame_number_files,
    frame_ranges,
)

LABEL_DIR = "ActionUnit_Labels"
VIDEO_DIR = "Videos_LeftCamera"
PRESENT_INTENSITY = 2


def video_path(root: Path, subject: str) -> Path:
    return root / VIDEO_DIR / f"LeftVideo{subject}_comp.avi"


def read_intensities(path: Path, problems: Problems) -> dict[int, int]:
    """``{frame: intensity}`` of one ``SNxxx_auN.txt``; bad lines are skipped and reported."""
    table: dict[int, int] = {}
    for line_number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            frame, intensity = (int(float(v)) for v in line.replace(",", " ").split())
        except ValueError:
            problems.add("unreadable label lines (skipped)", f"{path.name}:{line_number}")
            continue
        if not 0 <= intensity <= 5:
            problems.add("intensities outside 0-5 (masked)", f"{path.name}:{line_number}")
            continue
        table.setdefault(frame, intensity)
    return table


def _subject_labels(folder: Path, aus: tuple[int, ...],
                    problems: Problems) -> dict[int, tuple[int, ...]]:
    """``{frame: labels}`` of one subject: present = intensity >= 2; AUs without a label
    line for a frame (or without a file) are unknown."""
    subject = folder.name
    per_au: list[dict[int, int]] = []
    for n in aus:
        path = folder / f"{subject}_au{n}.txt"
        if not path.is_file():
            problems.add("missing AU label files (AU masked)", f"{subject}_au{n}.txt")
        per_au.append(read_intensities(path, problems) if path.is_file() else {})
    frames = sorted(set().union(*per_au))
    return {f: tuple(int(t[f] >= PRESENT_INTENSITY) if f in t else UNKNOWN for t in per_au)
            for f in frames}


def first_frame_number(images: dict[str, dict[int, Path]], frame_offset: int | None,
                       images_root: Path) -> tuple[int, str]:
    """The number of label frame 1's image (0 or 1) given the frame folders ``{subject: {number:
    image}}``, and a line for the summaries saying which numbering is used and why."""
    if frame_offset not in (None, 0, 1):
        raise ValueError(f"--frame-offset is the number of the first extracted DISFA frame, "
                         f"0 or 1; got {frame_offset}")
    if frame_offset is None:
        zero = sorted(subject for subject, numbers in images.items() if 0 in numbers)
        frame_offset = 0 if zero else 1
        why = f"frame 0 found in {', '.join(zero[:3])}" if zero else "no subject has a frame 0"
    else:
        why = "set by --frame-offset"
    return frame_offset, (f"DISFA frames in {images_root} are numbered from {frame_offset} "
                          f"({why}): label frame 1 is image {frame_offset}; to force the other "
                          f"numbering give --frame-offset {1 - frame_offset}")


def read_disfa(root: str | os.PathLike, frames_root: str | os.PathLike | None = None,
               frame_offset: int | None = None,
               aus: tuple[int, ...] | str = "disfa") -> RawDataset:
    """Every labelled DISFA frame under ``root`` whose image or video frame exists.

    Args:
        root: the folder holding ``ActionUnit_Labels`` (and ``Videos_LeftCamera``).
        frames_root: a folder of extracted frames ``SNxxx/<frame>.jpg``; None = use the videos.
        frame_offset: the number of the first extracted frame: 0 (label frame n is image n - 1)
            or 1 (image n); None = 0 when a subject folder holds a frame 0, else 1.
        aus: the AUs to read (default: the 8 standard DISFA AUs).
    """
    root = Path(root).expanduser()
    aus = au_numbers(aus)
    label_root = root / LABEL_DIR
    subjects = sorted(p for p in label_root.glob("*") if p.is_dir()) if label_root.is_dir() else []
    if not subjects:
        raise FileNotFoundError(f"no DISFA label folders {label_root}/SNxxx/; give the DISFA root "
                                f"(the folder holding {LABEL_DIR}/)")
    images_root = Path(frames_root).expanduser() if frames_root is not None else None
    problems, frames, notes, settings = Problems(), [], [], {}
    per_subject: dict[str, dict[int, Path]] = {}
    if images_root is not None:
        per_subject = {f.name: frame_number_files(images_root / f.name) for f in subjects
                       if (images_root / f.name).is_dir()}
        frame_offset, note = first_frame_number(per_subject, frame_offset, images_root)
        notes.append(note)
        settings["frame_offset"] = frame_offset
    for folder in subjects:
        subject = folder.name
        table = _subject_labels(folder, aus, problems)
        if images_root is not None:
            if subject not in per_subject:
                problems.add("missing subject frame folders (labels skipped)", subject)
                continue
            images = per_subject[subject]
            wanted = {f: f - 1 + frame_offset for f in table}
            if absent := sorted(f for f, n in wanted.items() if n not in images):
                problems.add("label rows for frames that do not exist (skipped)",
                             f"{subject}: {len(absent)} frames {frame_ranges(absent)}")
            if unlabelled := sorted(set(images) - set(wanted.values())):
                problems.add("frames without labels (not used)",
                             f"{subject}: {len(unlabelled)} frames {frame_ranges(unlabelled)}")
            frames += [RawFrame(subject, subject, f, table[f], images[n])
                       for f, n in wanted.items() if n in images]
            continue
        video = video_path(root, subject)
        if not video.is_file():
            problems.add("missing subject videos (labels skipped)", f"{subject} ({video.name})")
            continue
        capture = cv2.VideoCapture(str(video))
        count = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
        capture.release()
        # the header's frame count can be wrong for a truncated file; prepare finds the real end
        if beyond := sorted(f for f in table if not 1 <= f <= count):
            problems.add("label rows outside the video's frames (skipped)",
                         f"{subject}: {len(beyond)} frames {frame_ranges(beyond)} "
                         f"(video has {count})")
        frames += [RawFrame(subject, subject, f, table[f], video=video, video_index=f - 1)
                   for f in sorted(table) if 1 <= f <= count]
    for folder in sorted(root.glob(f"{VIDEO_DIR}/LeftVideo*_comp.avi")):
        subject = folder.name.removeprefix("LeftVideo").removesuffix("_comp.avi")
        if not (label_root / subject).is_dir():
            problems.add("videos without labels (not used)", folder.name)
    return RawDataset("disfa", root, aus, frames, problems, notes, settings)
