"""Face preprocessing: MTCNN boxes + 5 points, 68 landmarks, similarity alignment to the
canonical template, fixed-size crops, checksums and the labelled manifest.

``aukit-prepare --dataset bp4d|disfa|folder --data-root RAW --out OUT
[--workers N] [--size 256] [--device cpu] [--landmarks auto|dlib68|template]
[--frames-root FRAMES [--frame-offset 0|1]]`` writes

- ``OUT/crops/...jpg``: aligned crops (``<subject>/<task>/<frame>.jpg``; folder: mirrored paths);
- ``OUT/crops/...npy``: next to a crop, its 68 landmarks ``[68, 2]`` in crop pixels, when the
  landmark stage (``aukit.landmarks``) found them; a crop without one has the template's;
- ``OUT/crops.csv``: per crop its source, sha256, MTCNN box (``box_x1 .. box_y2``) and score, and
  5 points (``right_eye_x, right_eye_y, left_eye_x, ... mouth_left_y``; the subject's right and
  left, so the right eye is on the image's left), all in source pixels; and ``landmarks``, the
  source of the crop's 68 landmarks (``dlib68`` or ``template``);
- ``OUT/no_face.txt``: frames where no face was found (``no_face``), and frames a truncated video
  lacks or holds only half-decoded (``no_frame``, see ``_frames``);
- ``OUT/template_landmarks.txt``: crops that got the template because the 68-point fit failed;
- ``OUT/manifest.csv`` (bp4d / disfa): the generic manifest of the crops with their labels and
  landmarks files;
- ``OUT/prepare_report.txt``: counts and the reader's problems, by name.

A face is aligned by mapping 5 points onto the template's eye centres, nose tip and mouth
corners: those of its 68 landmarks when the landmark stage found them (stored, in crop pixels),
else MTCNN's, and then the crop's landmarks are the template's (``canonical_landmarks(size)``),
which is what the datasets use when a manifest row has no landmarks file. Coordinates are
continuous pixel coordinates (``aukit.au_maps``). Videos are decoded frame by frame.
Progress is appended per frame to ``OUT/records/*.csv``; a rerun skips recorded frames.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import multiprocessing
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from aukit.au_maps import canonical_landmarks
from aukit.data.datasets import LANDMARKS_SIDECAR, folder_images, read_rgb
from aukit.data.readers import (
    IMAGE_SUFFIXES,
    PREPARED_MANIFEST,
    RawDataset,
    RawFrame,
    manifest_hash,
    manifest_summary,
    read_raw,
)
from aukit.data.video import video_frames
from aukit.landmarks import (
    AUTO,
    DLIB68,
    TEMPLATE,
    Landmarker,
    detect_faces,
    find_landmarks,
    five_points,
    resolve_source,
)
from aukit.utils.device import check_device

POINTS = ("right_eye", "left_eye", "nose", "mouth_right", "mouth_left")  # MTCNN's order
RECORD_FIELDS = ("crop", "status", "sha256", "box_x1", "box_y1", "box_x2", "box_y2", "score",
                 *(f"{point}_{axis}" for point in POINTS for axis in ("x", "y")))
OK, NO_FACE, NO_FRAME = "ok", "no_face", "no_frame"
_BATCH = 8  # frames per MTCNN call: same-size frames of one sequence batch well on a GPU


def template_points(size: int) -> np.ndarray:
    """``[5, 2]``: eye centres (subject's right, then left), nose tip, mouth corners of the
    canonical face in a ``size`` crop; the order of MTCNN's points."""
    return five_points(canonical_landmarks(size)).astype(np.float64)


def similarity_transform(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """``[2, 3]`` least-squares similarity (rotation, uniform scale, translation; no reflection)
    taking points ``src`` ``[P, 2]`` onto ``dst`` ``[P, 2]`` (Umeyama, 1991)."""
    src, dst = np.asarray(src, np.float64), np.asarray(dst, np.float64)
    mu_s, mu_d = src.mean(0), dst.mean(0)
    s0, d0 = src - mu_s, dst - mu_d
    u, sigma, vt = np.linalg.svd(d0.T @ s0 / len(src))
    flip = np.diag([1.0, np.sign(np.linalg.det(u) * np.linalg.det(vt)) or 1.0])
    rotation = u @ flip @ vt
    scale = np.trace(np.diag(sigma) @ flip) / s0.var(0).sum()
    return np.hstack([scale * rotation, (mu_d - scale * rotation @ mu_s)[:, None]])


def _warp(image: np.ndarray, matrix: np.ndarray, size: int) -> np.ndarray:
    """``image`` under the ``[2, 3]`` continuous-coordinate ``matrix``, ``[size, size, 3]``."""
    # warpAffine works on pixel indices, whose centres sit at +0.5 in continuous coordinates
    shifted = matrix.copy()
    shifted[:, 2] += matrix[:, :2] @ np.full(2, 0.5) - 0.5
    return cv2.warpAffine(image, shifted, (size, size), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_REPLICATE)


def align_face(image: np.ndarray, points: np.ndarray, size: int) -> np.ndarray:
    """The ``[size, size, 3]`` crop that puts the 5 ``points`` ``[5, 2]`` of ``image`` onto the
    template."""
    return _warp(image, similarity_transform(points, template_points(size)), size)


def align_with_landmarks(image: np.ndarray, box: np.ndarray, points: np.ndarray,
                         landmarker: Landmarker, size: int
                         ) -> tuple[np.ndarray, np.ndarray, str, np.ndarray]:
    """``(crop [size, size, 3], landmarks [68, 2] in crop pixels, their source, matrix [2, 3])``
    of the face with MTCNN ``box`` ``[4]`` and ``points`` ``[5, 2]``: aligned on the 5 points of
    its 68 landmarks when ``landmarker`` finds them, else on MTCNN's, with the template's
    landmarks; ``matrix`` maps image to crop coordinates."""
    found = landmarker(image, box, points)
    if found is None:
        matrix = similarity_transform(points, template_points(size))
        return _warp(image, matrix, size), canonical_landmarks(size), TEMPLATE, matrix
    matrix = similarity_transform(five_points(found), template_points(size))
    landmarks = (found @ matrix[:, :2].T + matrix[:, 2]).astype(np.float32)
    return _warp(image, matrix, size), landmarks, landmarker.source, matrix


@dataclass(frozen=True)
class Job:
    """One sequence (a task folder, a video or an image folder); ``items`` are
    ``(crop path relative to OUT, image path or "", video frame index)``."""

    name: str
    video: str | None
    items: tuple[tuple[str, str, int], ...]


def _frames(job: Job, done: set[str]) -> Iterator[tuple[str, np.ndarray | None]]:
    """``(crop, RGB frame or None when it cannot be read)`` for the items not yet ``done``; a
    truncated video's cut last frame is None too, like the frames it lacks (``video_frames``)."""
    todo = [item for item in job.items if item[0] not in done]
    if job.video is None:
        for crop, image, _ in todo:
            bgr = cv2.imread(image, cv2.IMREAD_COLOR)
            yield crop, None if bgr is None else cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        return
    wanted = {index: crop for crop, _, index in todo}
    if wanted:
        for index, frame in video_frames(job.video, wanted, max(wanted)):
            yield wanted.pop(index), frame
    for crop in wanted.values():
        yield crop, None


def read_records(path: Path) -> dict[str, dict]:
    """``{crop: record}`` of a records file (absent = nothing done), by column position: files
    written before the box and point columns had names of their own repeat ``x1,y1,x2,y2``.
    A row cut short by a killed run is not a record (its frame is redone)."""
    if not path.is_file():
        return {}
    with path.open(newline="") as f:
        rows = csv.reader(f)
        next(rows, None)
        return {row[0]: dict(zip(RECORD_FIELDS, row, strict=True)) for row in rows
                if len(row) == len(RECORD_FIELDS)}


def process_job(job: Job, out: Path, size: int, device: str = "cpu",
                landmarks: str = AUTO) -> Path:
    """Align the frames of ``job`` not yet recorded, with ``landmarks`` from that source; return
    its records file."""
    landmarker = Landmarker(landmarks)
    record_path = out / "records" / f"{job.name}.csv"
    record_path.parent.mkdir(parents=True, exist_ok=True)
    done = set(read_records(record_path))
    fresh = not record_path.is_file()
    with record_path.open("a", newline="") as f:
        writer = csv.writer(f)
        if fresh:
            writer.writerow(RECORD_FIELDS)
        pending: list[tuple[str, np.ndarray]] = []

        def flush() -> None:
            for (crop, image), face in zip(pending, detect_faces(pending, device), strict=True):
                if face is None:
                    writer.writerow([crop, NO_FACE] + [""] * (len(RECORD_FIELDS) - 2))
                    continue
                box, score, points = face
                path = out / crop
                path.parent.mkdir(parents=True, exist_ok=True)
                aligned, crop_landmarks, source, _ = align_with_landmarks(image, box, points,
                                                                          landmarker, size)
                cv2.imwrite(str(path), cv2.cvtColor(aligned, cv2.COLOR_RGB2BGR),
                            [cv2.IMWRITE_JPEG_QUALITY, 95])
                if source != TEMPLATE:  # before the record: a recorded crop has its landmarks
                    np.save(path.with_suffix(".npy"), crop_landmarks)
                digest = hashlib.sha256(path.read_bytes()).hexdigest()
                writer.writerow([crop, OK, digest, *np.round(box, 2), round(score, 5),
                                 *np.round(points.reshape(-1), 2)])
            f.flush()  # a killed run keeps every frame recorded so far
            pending.clear()

        for crop, image in _frames(job, done):
            if image is None:
                writer.writerow([crop, NO_FRAME] + [""] * (len(RECORD_FIELDS) - 2))
                continue
            if pending and image.shape != pending[0][1].shape:
                flush()
            pending.append((crop, image))
            if len(pending) == _BATCH:
                flush()
        if pending:
            flush()
    return record_path


def _run_job(args: tuple[Job, Path, int, str, str]) -> Path:
    return process_job(*args)


def _single_thread() -> None:
    """A pool worker's torch uses one thread: the workers share the cores."""
    import torch

    torch.set_num_threads(1)


def crop_name(frame: RawFrame) -> str:
    """``crops/<subject>/<task>/<frame>.jpg``; DISFA's sequence is its subject, so one level."""
    folder = "/".join(dict.fromkeys((frame.subject, frame.sequence)))
    return f"crops/{folder}/{frame.frame:05d}.jpg"


def jobs_for(raw: RawDataset) -> list[Job]:
    """One job per sequence; crops at ``crops/<subject>[/<task>]/<frame>.jpg``."""
    groups: dict[tuple[str, str], list] = {}
    videos: dict[tuple[str, str], str | None] = {}
    for frame in raw.frames:
        key = (frame.subject, frame.sequence)
        groups.setdefault(key, []).append(
            (crop_name(frame), str(frame.image or ""), frame.video_index))
        videos[key] = str(frame.video) if frame.video is not None else None
    return [Job("_".join(dict.fromkeys(key)), videos[key], tuple(items))
            for key, items in groups.items()]


def folder_jobs(root: Path, out: Path) -> list[Job]:
    """One job per folder of images under ``root`` (outside ``out``); crops mirror the paths."""
    groups: dict[Path, list] = {}
    for path in sorted(root.rglob("*")):
        if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file() \
                and not path.is_relative_to(out):
            relative = path.relative_to(root)
            groups.setdefault(relative.parent, []).append(
                (f"crops/{relative.with_suffix('.jpg').as_posix()}", str(path), -1))
    if not groups:
        raise FileNotFoundError(f"no images under {root} (looked for {', '.join(IMAGE_SUFFIXES)})")
    return [Job("_".join(folder.parts) or "root", None, tuple(items))
            for folder, items in groups.items()]


def write_landmarks_sidecar(root: str | os.PathLike, device: str = "cpu",
                            progress: bool = True) -> dict[str, int]:
    """Fit dlib's 68 landmarks to the largest MTCNN face of every image under ``root`` and
    write them, in image pixels, to ``root/landmarks.json``, the sidecar ``ImageFolderDataset``
    reads. Images without a face or a fit are left out: they get the template. Returns the
    counts ``images`` and ``fitted``."""
    root = Path(root).expanduser()
    images, landmarker = folder_images(root), Landmarker(DLIB68)
    found: dict[str, list] = {}
    with tqdm(total=len(images), unit="image", desc="landmarks", file=sys.stderr,
              disable=not progress) as bar:
        for start in range(0, len(images), _BATCH):
            paths = images[start:start + _BATCH]
            chunk = [read_rgb(path, f"found under {root}") for path in paths]
            for path, points in zip(paths, find_landmarks(chunk, landmarker, device),
                                    strict=True):
                if points is not None:
                    found[path.relative_to(root).as_posix()] = np.round(points, 2).tolist()
            bar.update(len(chunk))
    partial = root / f"{LANDMARKS_SIDECAR}.partial"  # a killed run leaves no half sidecar
    partial.write_text(json.dumps(found))
    os.replace(partial, root / LANDMARKS_SIDECAR)
    print(f"landmarks: dlib68 for {len(found)} of {len(images)} images under {root} -> "
          f"{root / LANDMARKS_SIDECAR}; the other {len(images) - len(found)} (no face or no fit) "
          "get the template", flush=True)
    return {"images": len(images), "fitted": len(found)}


def _check_settings(out: Path, settings: dict) -> None:
    """Refuse to resume into ``out`` with other settings: crops of two sizes would mix."""
    path = out / "prepare.json"
    if path.is_file():
        before = {"landmarks": TEMPLATE, **json.loads(path.read_text())}  # made before dlib68
        if before != settings:
            raise ValueError(f"{out} was prepared with {before}, not {settings}; rerun with "
                             "those settings to resume, or give a new --out")
    path.write_text(json.dumps(settings, indent=2))


def prepare(dataset: str, data_root: str | os.PathLike, out: str | os.PathLike,
            workers: int = 1, size: int = 256, device: str = "cpu",
            frames_root: str | None = None, frame_offset: int | None = None,
            landmarks: str = AUTO) -> dict[str, int]:
    """Detect, align and crop every frame of ``data_root`` into ``out``; returns the counts
    (``frames``, ``aligned``, ``no_face``, ``no_frame``, ``template_landmarks``: aligned crops
    whose 68-point fit failed). See the module docstring for files.
    ``frame_offset`` (DISFA ``frames_root``): the number of the first extracted frame, 0 or 1;
    None = 0 when a frame 0 exists (``aukit.data.readers.disfa``)."""
    if dataset not in ("bp4d", "disfa", "folder"):
        raise ValueError(f"dataset must be bp4d, disfa or folder, got {dataset!r}")
    if size < 32 or workers < 1:
        raise ValueError(f"need size >= 32 and workers >= 1, got {size} and {workers}")
    check_device(device)
    root, out = Path(data_root).expanduser().resolve(), Path(out).expanduser().resolve()
    if frame_offset is not None and (dataset != "disfa" or frames_root is None):
        raise ValueError(f"--frame-offset {frame_offset} numbers extracted DISFA frames; give it "
                         "with --dataset disfa --frames-root <folder>, or drop it")
    _check_root(dataset, root)
    raw = None
    if dataset == "folder":
        jobs = folder_jobs(root, out)
    else:
        options = {"frames_root": frames_root, "frame_offset": frame_offset}
        raw = read_raw(dataset, root, **{k: v for k, v in options.items() if v is not None})
        for note in raw.notes:
            print(note, flush=True)  # before hours of work, not only in the final report
        if not raw.frames:
            raise ValueError(f"no usable {dataset} frames under {root}:\n{raw.problems.report()}")
        jobs = jobs_for(raw)
    out.mkdir(parents=True, exist_ok=True)
    source = resolve_source(landmarks)  # fails now when dlib68 is asked for but missing
    _check_settings(out, {"dataset": dataset, "size": size, "template": "canonical-68/5pt",
                          "landmarks": source, **(raw.settings if raw is not None else {})})
    tasks = [(job, out, size, device, source) for job in jobs]
    if workers > 1:
        # spawn: a forked copy of a process that already ran torch can deadlock in OpenMP
        with multiprocessing.get_context("spawn").Pool(min(workers, len(tasks)),
                                                  _single_thread) as pool:
            for path in pool.imap_unordered(_run_job, tasks):
                print(f"done {path.stem}", flush=True)
    else:
        for task in tasks:
            print(f"done {_run_job(task).stem}", flush=True)
    return _write_outputs(out, jobs, raw, source)


# the folder each data set's root holds, to tell a data set given under another's name
ROOT_MARKERS = {"bp4d": "AUCoding", "disfa": "ActionUnit_Labels"}


def _check_root(dataset: str, root: Path) -> None:
    """Refuses a missing ``--data-root``, or one that holds another data set's tree."""
    if not root.is_dir():
        wanted = "image folder" if dataset == "folder" else f"{dataset.upper()} root"
        raise FileNotFoundError(f"--data-root {root} does not exist or is not a folder; give the "
                                f"{wanted}")
    own = ROOT_MARKERS.get(dataset)
    if own is None or (root / own).is_dir():
        return
    for other, marker in ROOT_MARKERS.items():
        if (root / marker).is_dir():
            raise ValueError(f"--data-root {root} holds {marker}/, a {other.upper()} tree, not "
                             f"{own}/ ({dataset.upper()}): use --dataset {other}")


def _write_outputs(out: Path, jobs: list[Job], raw: RawDataset | None,
                   source: str) -> dict[str, int]:
    records = {k: v for job in jobs for k, v in read_records(out / "records" / f"{job.name}.csv")
               .items()}
    sources = {crop: image or f"{job.video}#frame{index}" for job in jobs
               for crop, image, index in job.items}
    aligned = sorted(c for c, r in records.items() if r["status"] == OK)
    # the landmarks file is written before the record, so a recorded crop without one has the
    # template's
    fitted = {c for c in aligned if (out / c).with_suffix(".npy").is_file()}
    with (out / "crops.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["source", *RECORD_FIELDS, "landmarks"])
        for crop in aligned:
            writer.writerow([sources[crop], *(records[crop][k] for k in RECORD_FIELDS),
                             source if crop in fitted else TEMPLATE])
    missed = sorted(c for c, r in records.items() if r["status"] != OK)
    (out / "no_face.txt").write_text("".join(f"{records[c]['status']}\t{sources[c]}\t{c}\n"
                                             for c in missed))
    templated = [c for c in aligned if c not in fitted] if source != TEMPLATE else []
    (out / "template_landmarks.txt").write_text("".join(f"{sources[c]}\t{c}\n"
                                                        for c in templated))
    counts = {"frames": len(sources), "aligned": len(aligned),
              "no_face": sum(records[c]["status"] == NO_FACE for c in missed),
              "no_frame": sum(records[c]["status"] == NO_FRAME for c in missed),
              "template_landmarks": len(templated)}
    if not aligned:
        raise ValueError(f"the face detector found no face in any of the {len(sources)} frames "
                         f"(each is listed in {out / 'no_face.txt'}); check that --data-root "
                         "holds face images or videos, with faces at least 20 px wide")
    lines = [f"{k}: {v}" for k, v in counts.items()]
    if raw is not None:
        kept = [f for f in raw.frames if records.get(crop_name(f), {}).get("status") == OK]
        manifest = RawDataset(raw.name, out, raw.aus, [replace(f, image=out / crop_name(f),
                                                               video=None) for f in kept],
                              raw.problems).manifest(out / PREPARED_MANIFEST)
        manifest.landmarks = [(out / crop_name(f)).with_suffix(".npy")
                              if crop_name(f) in fitted else None for f in kept]
        manifest.write_csv(out / PREPARED_MANIFEST)
        lines += [manifest_summary(manifest), *raw.notes,
                  f"manifest sha256 {manifest_hash(out / PREPARED_MANIFEST)}",
                  "reader problems:", raw.problems.report()]
    if missed:
        lines.append(f"{len(missed)} frames without a crop are listed in {out / 'no_face.txt'} "
                     "(status, source, crop)")
    lines.append(f"landmarks: {source}" + (f", {len(fitted)} crops fitted; {len(templated)} "
                                           "where the fit failed got the template, listed in "
                                           f"{out / 'template_landmarks.txt'}"
                                           if source != TEMPLATE else " for every crop"))
    report = "\n".join(lines)
    (out / "prepare_report.txt").write_text(report + "\n")
    print(report)
    return counts


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(allow_abbrev=False, prog="aukit-prepare",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", required=True, choices=("bp4d", "disfa", "folder"))
    parser.add_argument("--data-root", required=True, help="the raw data set (or image folder)")
    parser.add_argument("--out", required=True, help="output folder (rerun to resume)")
    parser.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 2) - 1))
    parser.add_argument("--size", type=int, default=256, help="crop size in pixels")
    parser.add_argument("--device", default="cpu", help="MTCNN device, e.g. cuda")
    parser.add_argument("--landmarks", default=AUTO, choices=(AUTO, DLIB68, TEMPLATE),
                        help="68 landmarks per crop: dlib68, the template, or auto (dlib68 when "
                             "installed)")
    parser.add_argument("--frames-root", default=None,
                        help="extracted frames instead of videos (DISFA) / other frame folder")
    parser.add_argument("--frame-offset", type=int, choices=(0, 1), default=None,
                        help="number of the first extracted DISFA frame (0: ME-GraphAU / JAA-Net "
                             "extraction); default: 0 when a frame 0 exists, else 1")
    args = parser.parse_args(argv)
    try:
        prepare(args.dataset, args.data_root, args.out, args.workers, args.size, args.device,
                args.frames_root, args.frame_offset, args.landmarks)
    except Exception as err:
        from aukit.cli import report_user_error  # Lightning loads only when something failed

        report_user_error(err, parser.prog)
        raise


if __name__ == "__main__":
    main()
