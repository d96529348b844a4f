"""Face preprocessing on tiny raw trees whose frames hold a real face (scikit-image's astronaut):
alignment onto the template, checksums, the labelled manifest, no-face and truncated-video
reports, resuming, and worker processes."""

import csv
import hashlib

import cv2
import numpy as np
import pytest
from skimage.data import astronaut
from test_readers import make_bp4d, make_disfa

from aukit.data.attention import canonical_landmarks
from aukit.data.manifest import read_manifest
from aukit.data.prepare import (
    _detect,
    align_face,
    prepare,
    similarity_transform,
    template_points,
)

SIZE = 64
BLANK = 103  # the tree builders number frames 100 * subject index + frame: M011's frame 3
FACE = cv2.resize(astronaut()[30:250, 120:340], (110, 110))  # RGB head and shoulders


def face_frame(i: int) -> np.ndarray:
    """A 160 px BGR frame with the face shifted by ``i``; frame id ``BLANK`` has no face."""
    frame = np.full((160, 160, 3), 120, np.uint8)
    if i != BLANK:
        dx = 10 + 7 * (i % 5)
        frame[20:130, dx:dx + 110] = FACE[..., ::-1]
    return frame


def test_similarity_transform_recovers_a_known_transform():
    rng = np.random.default_rng(0)
    src = rng.uniform(0, 100, (5, 2))
    angle, scale, shift = 0.3, 1.7, np.array([5.0, -2.0])
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    dst = scale * src @ rotation.T + shift
    np.testing.assert_allclose(similarity_transform(src, dst),
                               np.hstack([scale * rotation, shift[:, None]]), atol=1e-9)


def test_template_points_come_from_the_canonical_face():
    t = canonical_landmarks(SIZE)
    points = template_points(SIZE)
    np.testing.assert_allclose(points[0], t[36:42].mean(0), rtol=1e-6)
    assert points[0, 0] < points[1, 0] and points[3, 0] < points[4, 0]  # MTCNN's order


def test_aligned_face_lands_on_the_template():
    image = astronaut()
    (face,) = _detect([("x", image)], "cpu")
    crop = align_face(image, face[2], 128)
    (again,) = _detect([("x", crop)], "cpu")
    assert again is not None
    # least squares leaves a residual (she smiles: wider mouth corners than the mean face)
    error = np.linalg.norm(again[2] - template_points(128), axis=1)
    assert error.mean() < 5 and error[:2].max() < 6  # px in a 128 px crop


@pytest.mark.slow
def test_prepare_bp4d_and_disfa_trees_report_resume_and_parallel(tmp_path):
    bp4d = make_bp4d(tmp_path / "bp4d", subjects=("F001", "M011"), frames=3, image=face_frame)
    out = tmp_path / "bp4d-out"
    counts = prepare("bp4d", bp4d, out, workers=1, size=SIZE)
    assert counts == {"frames": 6, "aligned": 5, "no_face": 1, "no_frame": 0}
    assert (out / "no_face.txt").read_text().startswith("no_face\t")
    assert "M011/T1/0003.jpg" in (out / "no_face.txt").read_text()  # listed by name
    manifest = read_manifest(out / "manifest.csv", "bp4d")
    assert len(manifest) == 5 and set(manifest.subjects) == {"F001", "M011"}
    assert cv2.imread(str(manifest.images[0])).shape == (SIZE, SIZE, 3)
    with (out / "crops.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 5 and all(float(r["score"]) > 0.9 for r in rows)
    assert rows[0]["sha256"] == hashlib.sha256((out / rows[0]["crop"]).read_bytes()).hexdigest()
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*.jpg")}
    assert prepare("bp4d", bp4d, out, workers=1, size=SIZE) == counts  # resume: nothing redone
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.jpg")} == before
    with pytest.raises(ValueError, match="prepared with"):
        prepare("bp4d", bp4d, out, size=SIZE * 2)

    disfa = make_disfa(tmp_path / "disfa", subjects=("SN002", "SN013"), frames=3,
                       image=face_frame, video_frames={"SN013": 2})
    out = tmp_path / "disfa-out"
    counts = prepare("disfa", disfa, out, workers=2, size=SIZE)  # spawned workers
    # SN002: frame 3 is video frame 2 (face); SN013's video is 2 frames: the reader drops frame 3
    assert counts == {"frames": 5, "aligned": 5, "no_face": 0, "no_frame": 0}
    manifest = read_manifest(out / "manifest.csv", "disfa")
    assert len(manifest) == 5 and manifest.mask.all()
    assert "label rows outside the video's frames" in (out / "prepare_report.txt").read_text()
