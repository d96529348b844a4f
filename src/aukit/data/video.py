"""Frame-by-frame video decoding that does not pass off a truncated video's cut frame as real."""

from __future__ import annotations

from collections.abc import Container, Iterator
from pathlib import Path

import cv2
import numpy as np


def riff_cut(path: Path) -> bool:
    """True when a RIFF file (AVI, OpenDML included) is shorter than its chunks declare, as a
    cut-off download or copy is; False for other containers."""
    size, offset = path.stat().st_size, 0
    with path.open("rb") as f:
        while offset + 8 <= size:
            f.seek(offset)
            head = f.read(8)
            if head[:4] != b"RIFF":
                return False
            offset += 8 + int.from_bytes(head[4:], "little")
    return offset > size


def video_frames(path: str | Path, wanted: Container[int] | None = None,
                 stop: int | None = None) -> Iterator[tuple[int, np.ndarray | None]]:
    """``(index, RGB frame [H, W, 3] uint8 or None)`` for the frames of ``path`` in ``wanted``
    (all when None), up to frame ``stop`` (inclusive; the end when None).

    A truncated video (a RIFF file shorter than it declares, or fewer frames decoded than its
    frame count) ends in a frame whose data was cut: decoders return it half-drawn or as a copy
    of the frame before, so that last decoded frame comes as None, like an unreadable one.
    Frames the video lacks are not yielded; the caller knows which it asked for.
    """
    capture, index = cv2.VideoCapture(str(path)), 0
    held = None  # the last frame read, yielded once a next frame shows it is not the cut one
    try:
        while stop is None or index <= stop:
            if not capture.grab():
                break
            if held is not None:
                yield held
                held = None
            if wanted is None or index in wanted:
                ok, bgr = capture.retrieve()
                held = index, cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB) if ok else None
            index += 1
        if held is not None and not capture.grab():  # ``held`` is the last decoded frame
            count = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
            if riff_cut(Path(path)) or index < count:
                held = held[0], None
        if held is not None:
            yield held
    finally:
        capture.release()
