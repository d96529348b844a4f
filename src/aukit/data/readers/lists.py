"""ME-GraphAU-style list files: an image-path list (one path per line, e.g. ``F001/T1/2440.jpg``)
and a label matrix (one whitespace-separated row of 0 / 1 per image, one column per AU; -1 or 9
= unknown), read into the generic manifest.

The subject is a component of each image path (the first by default). Those releases name their
folds differently from us (see ``aukit.data.protocol``): read the lists of every fold into one
manifest (or the train + test lists of one fold) and let our fold lists split it by subject.
"""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

import numpy as np

from aukit.au import DATASET_AUS, au_numbers
from aukit.data.manifest import Manifest, ManifestError
from aukit.data.readers import manifest_hash, manifest_summary

log = logging.getLogger(__name__)


def _lines(path: Path) -> list[str]:
    if not path.is_file():
        raise FileNotFoundError(f"list file {path} does not exist")
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


def read_lists(image_lists: list[str | os.PathLike], label_lists: list[str | os.PathLike],
               aus: tuple[int, ...] | str, image_root: str | os.PathLike,
               subject_part: int = 0) -> Manifest:
    """Pairs of (image list, label matrix) files as one manifest.

    Args:
        image_lists: image-path list files; paths relative to ``image_root`` or absolute.
        label_lists: the matching label matrices, same order and length.
        aus: the AU of each label column, in order (e.g. ``"bp4d"`` or ``["AU1", "AU2"]``).
        image_root: the folder image paths are relative to.
        subject_part: which path component is the subject (0 = first).
    """
    aus = au_numbers(aus)
    if len(image_lists) != len(label_lists) or not image_lists:
        raise ValueError(f"give one label file per image list; got {len(image_lists)} image "
                         f"lists and {len(label_lists)} label files")
    root = Path(image_root).expanduser()
    images, subjects, rows = [], [], []
    for image_list, label_list in zip(image_lists, label_lists, strict=True):
        paths, labels = _lines(Path(image_list)), _lines(Path(label_list))
        # a length mismatch shifts every label onto the wrong image: stop rather than guess
        if len(paths) != len(labels):
            raise ManifestError(f"{image_list} lists {len(paths)} images but {label_list} has "
                                f"{len(labels)} label rows; they must pair line by line")
        for number, (text, row) in enumerate(zip(paths, labels, strict=True), start=1):
            values = row.replace(",", " ").split()
            if len(values) != len(aus):
                raise ManifestError(f"{label_list}, line {number}: {len(values)} labels but "
                                    f"{len(aus)} AUs ({', '.join(f'AU{n}' for n in aus)}); "
                                    "give the AU list the columns were written for")
            parts = Path(text).parts
            if subject_part >= len(parts) - 1:
                raise ManifestError(f"{image_list}, line {number}: path {text!r} has no folder "
                                    f"component {subject_part} to take the subject from")
            images.append(root / text)
            subjects.append(parts[subject_part])
            rows.append([float(v) for v in values])
    matrix = np.array(rows, dtype=np.float32)  # [N, A]
    bad = ~np.isin(matrix, (0, 1, -1, 9))
    if bad.any():
        raise ManifestError(f"label values {sorted(set(matrix[bad].tolist()))[:5]} are not "
                            "0 / 1 (or -1 / 9 for unknown); these are not occurrence labels")
    exists = np.array([p.is_file() for p in images], dtype=bool)
    if not exists.any():
        raise FileNotFoundError(f"none of the listed images exists under {root} (first: "
                                f"{images[0]}); set image_root to the folder the list paths are "
                                "relative to")
    skipped = [f"listed image {p} does not exist (row skipped)"
               for p, ok in zip(images, exists, strict=True) if not ok]
    if skipped:
        log.warning("%d of %d listed images do not exist; skipped, first: %s", len(skipped),
                    len(images), skipped[0])
    keep = np.flatnonzero(exists)
    known = (matrix == 0) | (matrix == 1)
    return Manifest(root, [images[i] for i in keep], [subjects[i] for i in keep],
                    np.where(known, matrix, 0)[keep], known[keep], [None] * len(keep), aus,
                    Path(image_lists[0]), skipped=skipped)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(allow_abbrev=False,
        prog="python -m aukit.data.readers.lists",
        description="ME-GraphAU-style list files -> a manifest for --data.manifest")
    parser.add_argument("--images", nargs="+", required=True, help="image-path list files")
    parser.add_argument("--labels", nargs="+", required=True, help="label matrices, same order")
    parser.add_argument("--aus", required=True, help="bp4d, disfa or AU1,AU2,... (column order)")
    parser.add_argument("--image-root", required=True, help="folder the image paths start in")
    parser.add_argument("--subject-part", type=int, default=0)
    parser.add_argument("--out", required=True, help="manifest CSV to write")
    args = parser.parse_args(argv)
    aus = args.aus if args.aus in DATASET_AUS else args.aus.split(",")
    manifest = read_lists(args.images, args.labels, aus, args.image_root, args.subject_part)
    manifest.write_csv(args.out)
    manifest.source = Path(args.out)
    print(f"{manifest_summary(manifest)}\nmanifest sha256 {manifest_hash(args.out)}")


if __name__ == "__main__":
    main()
