"""The landmark stage: 68 facial landmarks of a detected face, or none (the template).

Sources (``--landmarks``):

- ``dlib68``: the iBUG-68 regression-tree predictor of dlib (``dlib-bin``) with
  ``shape_predictor_68_face_landmarks.dat`` from ``face-recognition-models`` (about 100 MB,
  loaded once per process), placed by the MTCNN face box; a few ms per face on a CPU;
- ``template``: no per-face landmarks; an aligned crop gets the canonical template
  (``aukit.au_maps.canonical_landmarks``);
- ``auto``: ``dlib68`` when both packages are installed, else ``template`` with a notice.

``detect_faces(images)`` finds the largest MTCNN face (box, score, 5 points) of each image;
``Landmarker(source)(image, box, points)`` returns the face's ``[68, 2]`` landmarks in the
image's continuous pixel coordinates (``aukit.au_maps``), or None: the template source,
or a prediction that disagrees with MTCNN's 5 points (a failed fit), so the caller falls back to
the template. ``find_landmarks(images, landmarker)`` chains the two, as ``aukit-prepare`` does
(the SynthAU benchmark feeds every model these, ``aukit.data.synthau_landmarks``).
"""

from __future__ import annotations

import importlib.util
import sys
from functools import lru_cache
from pathlib import Path

import numpy as np

TEMPLATE, DLIB68, AUTO = "template", "dlib68", "auto"
SOURCES = (AUTO, DLIB68, TEMPLATE)
# a fit whose 5 points lie further than this from MTCNN's, on average, in MTCNN inter-ocular
# distances, has landed off the face (on the astronaut they agree within 0.05)
MAX_DISAGREEMENT = 0.3
# MTCNN's smallest face (its min_face_size default), in pixels: smaller frames hold no face
MIN_FACE_PIXELS = 20


def dlib_available() -> bool:
    """True when ``dlib`` and ``face_recognition_models`` are installed."""
    return all(importlib.util.find_spec(name) is not None
               for name in ("dlib", "face_recognition_models"))


def resolve_source(source: str) -> str:
    """``dlib68`` or ``template`` for a ``SOURCES`` name (``auto`` says when it falls back)."""
    if source not in SOURCES:
        raise ValueError(f"landmarks must be one of {', '.join(SOURCES)}, got {source!r}")
    if source == AUTO:
        if dlib_available():
            return DLIB68
        print("landmarks: dlib or face-recognition-models is not installed (make install adds "
              "them): faces get the template's 68 points", file=sys.stderr)
        return TEMPLATE
    if source == DLIB68 and not dlib_available():
        raise ImportError("--landmarks dlib68 needs dlib-bin and face-recognition-models: pip "
                          "install dlib-bin face-recognition-models (make install does this)")
    return source


def five_points(landmarks: np.ndarray) -> np.ndarray:
    """``[..., 68, 2]`` -> ``[..., 5, 2]``: eye centres (subject's right, then left), nose tip
    and mouth corners, in the order of MTCNN's points."""
    return np.stack([landmarks[..., 36:42, :].mean(-2), landmarks[..., 42:48, :].mean(-2),
                     landmarks[..., 30, :], landmarks[..., 48, :], landmarks[..., 54, :]], -2)


@lru_cache(maxsize=1)
def _dlib_predictor():
    import dlib

    # face_recognition_models finds its files with pkg_resources, which recent setuptools lack:
    # locate the package without importing it
    spec = importlib.util.find_spec("face_recognition_models")
    folder = Path(next(iter(spec.submodule_search_locations)))  # type: ignore[union-attr]
    return dlib.shape_predictor(str(folder / "models" / "shape_predictor_68_face_landmarks.dat"))


def dlib68_landmarks(image: np.ndarray, box: np.ndarray) -> np.ndarray:
    """dlib's 68 points of the face in ``box`` ``[4]`` (x1, y1, x2, y2) of RGB uint8 ``image``
    ``[H, W, 3]``: float32 ``[68, 2]`` continuous pixel coordinates, always 68 points."""
    import dlib

    x1, y1, x2, y2 = (float(v) for v in box)
    # dlib's detector boxes are squares about as wide as MTCNN's, on its centre; the predictor
    # was trained on those, and fits closer from such a square than from MTCNN's taller box
    half, cx, cy = (x2 - x1) / 2, (x1 + x2) / 2, (y1 + y2) / 2
    rect = dlib.rectangle(*(int(round(v)) for v in (cx - half, cy - half, cx + half, cy + half)))
    shape = _dlib_predictor()(np.ascontiguousarray(image, dtype=np.uint8), rect)
    # dlib returns pixel indices, whose centres sit at +0.5 in continuous coordinates
    return np.array([(p.x, p.y) for p in shape.parts()], np.float32) + 0.5


class Landmarker:
    """The landmark stage of one source (``SOURCES``; ``auto`` is resolved here)."""

    def __init__(self, source: str = AUTO) -> None:
        self.source = resolve_source(source)
        if self.source == DLIB68:
            _dlib_predictor()  # load once, now, not inside the first batch

    def __call__(self, image: np.ndarray, box: np.ndarray,
                 points: np.ndarray) -> np.ndarray | None:
        """``[68, 2]`` landmarks of the face with MTCNN ``box`` ``[4]`` and ``points`` ``[5, 2]``
        in RGB ``image`` ``[H, W, 3]``, or None (template source, or a failed fit)."""
        if self.source == TEMPLATE:
            return None
        landmarks = dlib68_landmarks(image, box)
        iod = np.linalg.norm(points[1] - points[0])
        error = np.linalg.norm(five_points(landmarks) - points, axis=1).mean()
        return landmarks if error <= MAX_DISAGREEMENT * iod else None


_detector = None


def _mtcnn(device: str):
    global _detector  # one detector per process, built on first use
    if _detector is None:
        import torch
        from facenet_pytorch import MTCNN

        # building it draws random initial weights (then replaced by its own): kept off the
        # global generator, so a run draws the same numbers whether landmarks were cached or not
        with torch.random.fork_rng(devices=[]):
            _detector = MTCNN(device=device)
    return _detector


def mtcnn_faces(mtcnn, images: list[np.ndarray], min_size: int = MIN_FACE_PIXELS
                ) -> list[tuple[np.ndarray, np.ndarray, np.ndarray] | None]:
    """An MTCNN detector (facenet-pytorch) over RGB uint8 images ``[H, W, 3]``: per image its
    faces as float arrays ``(boxes [F, 4], scores [F], points [F, 5, 2])``, or None where it
    finds none. Same-size images go as one batch; an image smaller than ``min_size`` (the
    detector's smallest face) holds none: MTCNN fails on it."""
    large = [i for i, image in enumerate(images) if min(image.shape[:2]) >= min_size]
    found: list[tuple[np.ndarray, np.ndarray, np.ndarray] | None] = [None] * len(images)
    if not large:
        return found
    shapes = {images[i].shape for i in large}
    batches = [large] if len(shapes) == 1 else [[i] for i in large]
    for batch in batches:
        stacked = np.stack([images[i] for i in batch])
        for i, b, s, p in zip(batch, *mtcnn.detect(stacked, landmarks=True), strict=True):
            if b is not None:  # facenet-pytorch returns object arrays under numpy 2
                found[i] = (np.asarray(b, float), np.asarray(s, float).reshape(-1),
                            np.asarray(p, float))
    return found


def detect_faces(frames: list[tuple[str, np.ndarray]],
                 device: str = "cpu") -> list[tuple[np.ndarray, float, np.ndarray] | None]:
    """MTCNN ``(box [4], score, points [5, 2])`` of the largest face in each ``(name, RGB uint8
    image [H, W, 3])`` frame, or None where it finds none (``mtcnn_faces``)."""
    found = []
    for faces in mtcnn_faces(_mtcnn(device), [image for _, image in frames]):
        if faces is None:
            found.append(None)
            continue
        b, s, p = faces
        k = int(((b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])).argmax())
        found.append((b[k], float(s[k]), p[k]))
    return found


def find_landmarks(images: list[np.ndarray], landmarker: Landmarker,
                   device: str = "cpu") -> list[np.ndarray | None]:
    """The landmark stage on whole images: ``landmarker``'s ``[68, 2]`` landmarks of the largest
    MTCNN face of each RGB uint8 image ``[H, W, 3]``, or None (no face, or a failed fit)."""
    faces = detect_faces([("", image) for image in images], device)
    return [None if face is None else landmarker(image, face[0], face[2])
            for image, face in zip(images, faces, strict=True)]
