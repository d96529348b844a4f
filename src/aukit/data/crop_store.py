"""Aligned face crops packed into one memory-mapped array, so training reads pixels, not JPEGs.

A store is a folder: ``images.npy`` uint8 ``[N, S, S, 3]`` RGB, ``landmarks.npy`` float32
``[N, 68, 2]`` (pixels in the crop) and ``index.json`` (the image path each row came from, as
resolved by the manifest). Rows are read through ``numpy``'s memory map: every DataLoader worker
shares the page cache and decodes nothing. Write one from a manifest with
``python -m aukit.data.crop_store --manifest train.csv --out crops/`` (after ``prepare``), then
pass ``--data.crop_store crops/``; the manifest still supplies labels, subjects and splits.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import cv2
import numpy as np

from aukit.au import NUM_LANDMARKS
from aukit.au_maps import canonical_landmarks
from aukit.data.datasets import read_rgb
from aukit.data.manifest import Manifest, load_landmarks, read_manifest

INDEX = "index.json"


def _crop(image: np.ndarray, landmarks: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Resize ``image`` ``[H, W, 3]`` to ``[size, size, 3]``, scaling ``landmarks`` ``[68, 2]``."""
    height, width = image.shape[:2]
    if (height, width) != (size, size):
        image = cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA)
        landmarks = landmarks * np.array([size / width, size / height], np.float32)
    return image, landmarks.astype(np.float32)


def write_crop_store(manifest: Manifest, out: str | Path, size: int = 256) -> Path:
    """Decode every manifest image once into a store at ``out`` (``size`` px square crops)."""
    out = Path(out).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    count = len(manifest)
    images = np.lib.format.open_memmap(out / "images.npy", "w+", np.uint8, (count, size, size, 3))
    points = np.empty((count, NUM_LANDMARKS, 2), np.float32)
    for i in range(count):
        image = read_rgb(manifest.images[i], f"listed in {manifest.row_label(i)}")
        landmarks = (load_landmarks(manifest.landmarks[i]) if manifest.landmarks[i] is not None
                     else canonical_landmarks(image.shape[:2]))
        images[i], points[i] = _crop(image, landmarks, size)
    images.flush()
    np.save(out / "landmarks.npy", points)
    (out / INDEX).write_text(json.dumps({"size": size,
                                         "images": [str(p) for p in manifest.images]}))
    return out


class CropStore:
    """Read side of a store: ``read(path) -> (image uint8 [S, S, 3], landmarks [68, 2])``.

    The memory map opens on first read, so each DataLoader worker opens its own.
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).expanduser()
        if not (self.root / INDEX).is_file():
            raise FileNotFoundError(f"{self.root} is not a crop store (no {INDEX}); write one "
                                    "with python -m aukit.data.crop_store --manifest <csv> "
                                    f"--out {self.root}")
        index = json.loads((self.root / INDEX).read_text())
        self.size = int(index["size"])
        self.rows = {path: i for i, path in enumerate(index["images"])}
        self._images: np.ndarray | None = None
        self._landmarks: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.rows)

    def check_covers(self, manifest: Manifest) -> None:
        """Raise if an image of ``manifest`` is not in the store (built from another list)."""
        missing = [str(p) for p in manifest.images if str(p) not in self.rows]
        if missing:
            raise ValueError(f"crop store {self.root} lacks {len(missing)} of the "
                             f"{len(manifest)} images of {manifest.root}, e.g. {missing[0]}; "
                             "rebuild it from the full manifest")

    def read(self, path: str | Path) -> tuple[np.ndarray, np.ndarray]:
        if self._images is None:
            self._images = np.load(self.root / "images.npy", mmap_mode="r")
            self._landmarks = np.load(self.root / "landmarks.npy", mmap_mode="r")
        row = self.rows[str(path)]
        return np.asarray(self._images[row]), np.array(self._landmarks[row])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(allow_abbrev=False, description=__doc__.splitlines()[0])
    parser.add_argument("--manifest", required=True, help="CSV / JSON manifest of the crops")
    parser.add_argument("--out", required=True, help="folder to write the store into")
    parser.add_argument("--size", type=int, default=256, help="crop side in pixels")
    args = parser.parse_args(argv)
    out = write_crop_store(read_manifest(args.manifest), args.out, args.size)
    print(f"wrote {out} ({len(CropStore(out))} crops); train with --data.crop_store {out}")


if __name__ == "__main__":
    main()
