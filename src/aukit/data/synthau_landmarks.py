"""The landmarks a SynthAU face is served with: what the toolkit's landmark stage finds on it.

SynthAU draws each face from its moved landmarks, so the renderer's own landmarks are exact and
carry most of the labels; no user has those. Every model therefore reads, by default, the
landmarks ``aukit.landmarks.find_landmarks`` finds on the rendered image (MTCNN's largest box ->
dlib68, the code path of ``aukit-prepare`` and ``aukit-predict``; where the fit fails, the
canonical template, as prepare gives such a crop). Sources (``--data.landmarks``):

- ``dlib68`` (or ``auto`` with dlib installed): detected, as above: the benchmark's inputs;
- ``exact``: the renderer's landmarks, an **oracle** for labelled ceiling rows only;
- ``template``: the canonical face's landmarks for every image (no landmark stage).

Detected landmarks are computed once per rendered face and kept on disk beside where the render
itself is cached (``<cache>/seed<seed>-px<size>/<subject>/<index>[-<frame>].dlib68.npz``, a few
hundred bytes each), so later epochs, runs and processes only read them.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from tqdm import tqdm

from aukit.au_maps import canonical_landmarks
from aukit.data.synthau import RENDER_SIZE, SynthAU, save_atomically
from aukit.landmarks import AUTO, DLIB68, TEMPLATE, Landmarker, find_landmarks, resolve_source

EXACT = "exact"
SYNTHAU_LANDMARKS = (AUTO, DLIB68, EXACT, TEMPLATE)
_BATCH = 8  # renders per MTCNN call
# a (subject, index, frame) key of one rendered face
Key = tuple[int, int, int]


def resolve_synthau_landmarks(source: str) -> str:
    """``dlib68``, ``exact`` or ``template`` for a ``SYNTHAU_LANDMARKS`` name (``auto`` is
    ``dlib68`` when dlib is installed, else the template, with a notice)."""
    if source not in SYNTHAU_LANDMARKS:
        raise ValueError(f"--data.landmarks must be one of {', '.join(SYNTHAU_LANDMARKS)} for "
                         f"SynthAU, got {source!r}")
    return source if source == EXACT else resolve_source(source)


class SynthAULandmarks:
    """The landmarks ``[68, 2]`` (pixels of the ``RENDER_SIZE`` render) of SynthAU faces from
    ``source`` (``SYNTHAU_LANDMARKS``); detected ones are cached under ``cache_dir`` (a folder;
    None: computed every time)."""

    def __init__(self, synth: SynthAU, source: str = AUTO,
                 cache_dir: str | os.PathLike | None = None) -> None:
        if synth.image_size != RENDER_SIZE:
            raise ValueError(f"detected landmarks are found on the {RENDER_SIZE} px render, got a "
                             f"renderer of {synth.image_size} px")
        self.synth = synth
        self.source = resolve_synthau_landmarks(source)
        self.cache_dir = None if cache_dir is None else \
            Path(cache_dir).expanduser() / f"seed{synth.seed}-px{synth.image_size}"
        self._landmarker: Landmarker | None = None

    def path(self, key: Key) -> Path | None:
        """Where the detected landmarks of face ``key`` are kept (None without a cache)."""
        if self.cache_dir is None:
            return None
        subject, index, frame = key
        name = f"{index:05d}.{DLIB68}.npz" if frame == 0 else f"{index:05d}-{frame}.{DLIB68}.npz"
        return self.cache_dir / f"{subject:04d}" / name

    def __call__(self, key: Key, sample: dict) -> np.ndarray:
        """The landmarks of face ``key``, whose ``SynthAU.sample`` is ``sample``."""
        if self.source == EXACT:
            return sample["landmarks"]
        if self.source == TEMPLATE:
            return canonical_landmarks(sample["image"].shape[:2])
        stored = self._read(key)
        if stored is None:
            stored = self._detect([key], [sample["image"]])[0]
        return stored[0]

    def _read(self, key: Key) -> tuple[np.ndarray, bool] | None:
        path = self.path(key)
        if path is None or not path.exists():
            return None
        with np.load(path) as stored:
            return stored["landmarks"], bool(stored["fitted"])

    def _detect(self, keys: list[Key], images: list[np.ndarray]) -> list[tuple[np.ndarray, bool]]:
        """Runs the landmark stage on ``images``, caches and returns ``(landmarks, fitted)``."""
        if self._landmarker is None:
            self._landmarker = Landmarker(DLIB68)
        out = []
        for key, image, found in zip(keys, images, find_landmarks(images, self._landmarker),
                                     strict=True):
            fitted = found is not None
            landmarks = (found if fitted else canonical_landmarks(image.shape[:2]))
            landmarks = np.asarray(landmarks, np.float32)
            path = self.path(key)
            if path is not None:
                save_atomically(path, landmarks=landmarks, fitted=np.array(fitted))
            out.append((landmarks, fitted))
        return out

    def prepare(self, keys: Iterable[Key], what: str = "SynthAU faces",
                progress: bool = True) -> dict[str, int]:
        """Detects and caches the landmarks of every face in ``keys`` not cached yet, with a
        progress bar; returns the counts ``faces``, ``detected`` (now) and ``template`` (faces,
        cached or new, whose fit failed and which get the template)."""
        keys = list(dict.fromkeys(keys))
        counts = {"faces": len(keys), "detected": 0, "template": 0}
        if self.source != DLIB68:
            return counts
        todo = []
        for key in keys:
            stored = self._read(key)
            if stored is None:
                todo.append(key)
            elif not stored[1]:
                counts["template"] += 1
        with tqdm(total=len(todo), unit="face", desc=f"landmarks of {what}", file=sys.stderr,
                  disable=not progress or not todo) as bar:
            for start in range(0, len(todo), _BATCH):
                chunk = todo[start:start + _BATCH]
                images = [self.synth.sample(s, i, f)["image"] for s, i, f in chunk]
                found = self._detect(chunk, images)
                counts["detected"] += len(chunk)
                counts["template"] += sum(not fitted for _, fitted in found)
                bar.update(len(chunk))
        return counts

