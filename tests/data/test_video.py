"""Video decoding: a cut file's last frame is unreadable, an intact one's never is."""

from pathlib import Path

import cv2
import numpy as np
import pytest

from aukit.data import video as video_module
from aukit.data.video import container_cut, video_frames


def write_video(path: Path, frames: int, fourcc: str) -> Path:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), 10.0, (64, 48))
    for i in range(frames):
        writer.write(np.full((48, 64, 3), 20 * i, np.uint8))
    writer.release()
    return path


class OverstatedCount:
    """A capture whose header promises one frame more than the file holds, as some MP4 and
    AVI writers' headers do."""

    def __init__(self, path: str):
        self.capture = REAL_CAPTURE(path)

    def get(self, prop):
        value = self.capture.get(prop)
        return value + 1 if prop == cv2.CAP_PROP_FRAME_COUNT else value

    def __getattr__(self, name):
        return getattr(self.capture, name)


REAL_CAPTURE = cv2.VideoCapture


@pytest.mark.parametrize("name,fourcc", [("v.mp4", "mp4v"), ("v.avi", "MJPG")])
def test_an_intact_video_whose_header_overstates_its_frames_keeps_every_frame(
        tmp_path, monkeypatch, name, fourcc):
    path = write_video(tmp_path / name, 4, fourcc)
    monkeypatch.setattr(video_module.cv2, "VideoCapture", OverstatedCount)
    frames = list(video_frames(path))
    assert [i for i, _ in frames] == [0, 1, 2, 3]
    assert all(image is not None for _, image in frames)


def test_container_cut_reads_avi_and_mp4_structure_and_leaves_other_containers(tmp_path):
    for name, fourcc in (("v.mp4", "mp4v"), ("v.avi", "MJPG")):
        path = write_video(tmp_path / name, 4, fourcc)
        assert container_cut(path) is False
        data = path.read_bytes()
        cut = tmp_path / f"cut-{name}"
        cut.write_bytes(data[:len(data) - 100])
        assert container_cut(cut) is True
    other = tmp_path / "v.mkv"
    other.write_bytes(b"\x1aE\xdf\xa3" + bytes(100))  # Matroska: not checked
    assert container_cut(other) is None
