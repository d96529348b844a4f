"""Frame-by-frame video decoding that does not pass off a truncated video's cut frame as real."""

from __future__ import annotations

from collections.abc import Container, Iterator
from pathlib import Path

import cv2
import numpy as np

# top-level box types that open an ISO base media file (MP4, MOV, M4V, 3GP)
ISO_FIRST_BOXES = (b"ftyp", b"moov", b"mdat", b"free", b"skip", b"wide", b"pnot")


def container_cut(path: Path) -> bool | None:
    """Whether a RIFF (AVI, OpenDML included) or ISO base media (MP4, MOV) file is shorter than
    its top-level chunks declare, as a cut-off download or copy is; None for other containers,
    whose structure is not checked."""
    size, offset = path.stat().st_size, 0
    with path.open("rb") as f:
        head = f.read(12)
        if head[:4] == b"RIFF":
            while offset + 8 <= size:
                f.seek(offset)
                head = f.read(8)
                if head[:4] != b"RIFF":
                    return False
                offset += 8 + int.from_bytes(head[4:], "little")
            return offset > size
        if head[4:8] not in ISO_FIRST_BOXES:
            return None
        while offset + 8 <= size:
            f.seek(offset)
            head = f.read(16)
            box = int.from_bytes(head[:4], "big")
            if box == 1:  # a 64-bit size follows the type
                box = int.from_bytes(head[8:16], "big")
            if box == 0:  # the box runs to the end of the file
                return False
            if box < 8:
                return True  # a size no box can have: the data stops in a box
            offset += box
        return offset > size


def video_frames(path: str | Path, wanted: Container[int] | None = None,
                 stop: int | None = None) -> Iterator[tuple[int, np.ndarray | None]]:
    """``(index, RGB frame [H, W, 3] uint8 or None)`` for the frames of ``path`` in ``wanted``
    (all when None), up to frame ``stop`` (inclusive; the end when None).

    A truncated video (an AVI or MP4 shorter than its chunks declare, ``container_cut``; in
    another container, fewer frames decoded than its header's frame count, which AVI and MP4
    headers can overstate for intact files) ends in a frame whose data was cut: decoders return
    it half-drawn or as a copy of the frame before, so that last decoded frame comes as None,
    like an unreadable one.
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
            cut = container_cut(Path(path))
            if cut or (cut is None and index < int(capture.get(cv2.CAP_PROP_FRAME_COUNT))):
                held = held[0], None
        if held is not None:
            yield held
    finally:
        capture.release()
