"""Face preprocessing on tiny raw trees whose frames hold a real face (scikit-image's astronaut):
alignment onto the template, checksums, the labelled manifest, no-face and truncated-video
reports, resuming, and worker processes; crops.csv columns, DISFA frame numbering and cut-off
videos with a stand-in detector."""

import csv
import hashlib
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from skimage.data import astronaut
from test_readers import extract_frames, make_bp4d, make_disfa, noise_image

from aukit.au_maps import canonical_landmarks
from aukit.data import prepare as prepare_module
from aukit.data.manifest import read_manifest
from aukit.data.prepare import (
    RECORD_FIELDS,
    Job,
    _frames,
    align_face,
    detect_faces,
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
    (face,) = detect_faces([("x", image)], "cpu")
    crop = align_face(image, face[2], 128)
    (again,) = detect_faces([("x", crop)], "cpu")
    assert again is not None
    # least squares leaves a residual (she smiles: wider mouth corners than the mean face)
    error = np.linalg.norm(again[2] - template_points(128), axis=1)
    assert error.mean() < 5 and error[:2].max() < 6  # px in a 128 px crop


@pytest.mark.slow
def test_prepare_bp4d_and_disfa_trees_report_resume_and_parallel(tmp_path):
    bp4d = make_bp4d(tmp_path / "bp4d", subjects=("F001", "M011"), frames=3, image=face_frame)
    out = tmp_path / "bp4d-out"
    counts = prepare("bp4d", bp4d, out, workers=1, size=SIZE)
    assert counts == {"frames": 6, "aligned": 5, "no_face": 1, "no_frame": 0,
                      "template_landmarks": 0}
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
    assert counts == {"frames": 5, "aligned": 5, "no_face": 0, "no_frame": 0,
                      "template_landmarks": 0}
    manifest = read_manifest(out / "manifest.csv", "disfa")
    assert len(manifest) == 5 and manifest.mask.all()
    assert "label rows outside the video's frames" in (out / "prepare_report.txt").read_text()


# ------------------------------------------------------------------ stand-in detector
BOX = np.array([11.0, 12.0, 31.0, 32.0])
POINTS = np.array([[15.0, 18.0], [27.0, 18.5], [21.0, 23.0], [16.0, 28.0], [26.0, 28.5]])


@pytest.fixture
def fake_detector(monkeypatch):
    """Every frame holds one face at ``BOX`` with the 5 ``POINTS`` (MTCNN's order)."""
    monkeypatch.setattr(prepare_module, "detect_faces",
                        lambda frames, device: [(BOX, 0.99, POINTS)] * len(frames))


def read_crops(path: Path) -> tuple[list[str], list[dict]]:
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        return list(reader.fieldnames), list(reader)


def test_crops_csv_names_every_column_once_and_old_records_still_read(tmp_path, fake_detector):
    (tmp_path / "faces").mkdir()
    for i in range(2):
        cv2.imwrite(str(tmp_path / "faces" / f"{i}.png"), noise_image(i))
    out = tmp_path / "out"
    prepare("folder", tmp_path / "faces", out, size=32)
    header, rows = read_crops(out / "crops.csv")
    assert len(header) == len(set(header)) and len(rows) == 2
    row = rows[0]
    assert [float(row[k]) for k in ("box_x1", "box_y1", "box_x2", "box_y2")] == list(BOX)
    named = [[float(row[f"{p}_{a}"]) for a in "xy"]
             for p in ("right_eye", "left_eye", "nose", "mouth_right", "mouth_left")]
    assert named == POINTS.tolist() and float(row["score"]) == 0.99
    # records written before the columns were renamed repeat x1,y1,x2,y2: read by position
    records = out / "records" / "root.csv"
    old_header = "crop,status,sha256,x1,y1,x2,y2,score,x1,y1,x2,y2,x3,y3,x4,y4,x5,y5"
    records.write_text(old_header + records.read_text()[records.read_text().index("\n"):])
    assert len(old_header.split(",")) == len(RECORD_FIELDS)
    prepare("folder", tmp_path / "faces", out, size=32)  # resume: nothing redone
    assert read_crops(out / "crops.csv") == (header, rows)


def test_prepare_disfa_frames_from_zero_report_and_refuse_mixed_resume(tmp_path, fake_detector,
                                                                       capsys):
    root = make_disfa(tmp_path / "raw", subjects=("SN002",), frames=3)
    extract_frames(tmp_path / "frames" / "SN002", 0, 3, first=0)
    out = tmp_path / "out"
    counts = prepare("disfa", root, out, size=32, frames_root=str(tmp_path / "frames"))
    assert counts == {"frames": 3, "aligned": 3, "no_face": 0, "no_frame": 0,
                      "template_landmarks": 0}
    report = (out / "prepare_report.txt").read_text()
    assert "numbered from 0 (frame 0 found in SN002)" in report and "no problems" in report
    assert "numbered from 0" in capsys.readouterr().out
    _, rows = read_crops(out / "crops.csv")
    assert sorted((Path(r["source"]).name, Path(r["crop"]).name) for r in rows) == [
        ("0.png", "00001.jpg"), ("1.png", "00002.jpg"), ("2.png", "00003.jpg")]
    assert json.loads((out / "prepare.json").read_text())["frame_offset"] == 0
    with pytest.raises(ValueError, match="prepared with"):  # crops of other frames would mix
        prepare("disfa", root, out, size=32, frames_root=str(tmp_path / "frames"),
                frame_offset=1)
    with pytest.raises(ValueError, match="--frame-offset 0 numbers extracted DISFA frames"):
        prepare("bp4d", root, out, size=32, frame_offset=0)


# ------------------------------------------------------------------ cut-off videos
def shape_frame(i: int) -> np.ndarray:
    """A 64 x 48 BGR frame: a flat colour and a white square that moves with ``i``."""
    frame = np.zeros((48, 64, 3), np.uint8)
    frame[:] = np.random.default_rng(i).integers(0, 255, 3)
    frame[10:30, 10 + 5 * i:30 + 5 * i] = 255
    return frame


def cut_avi(path: Path, frames_from_end: int) -> None:
    """Cut ``path`` in the middle of its ``frames_from_end``-th last frame (1 = the last), as a
    download or copy that stopped there would."""
    data = path.read_bytes()
    start = data.rfind(b"idx1")  # the index follows the frames
    for _ in range(frames_from_end):
        start = data.rfind(b"00dc", 0, start)
    size = int.from_bytes(data[start + 4:start + 8], "little")
    path.write_bytes(data[:start + 8 + size // 2])


@pytest.mark.parametrize("codec", ["MJPG", "XVID"])  # half-drawn / a copy of the frame before
@pytest.mark.parametrize("cut", [0, 1, 2])
def test_truncated_video_frames_are_no_frame(tmp_path, codec, cut):
    path = tmp_path / "video.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*codec), 10, (64, 48))
    for i in range(6):
        writer.write(shape_frame(i))
    writer.release()
    if cut:
        cut_avi(path, cut)
    job = Job("video", str(path), tuple((f"crops/{i}.jpg", "", i) for i in range(6)))
    frames = [image for _, image in _frames(job, set())]
    kept = [i for i, image in enumerate(frames) if image is not None]
    # the cut frames are gone, and one whole frame more where the decoder refused the cut one
    assert len(frames) == 6 and kept == list(range(len(kept)))
    assert 6 - cut - bool(cut) <= len(kept) <= 6 - cut
    for i in kept:  # what is kept is the right, whole frame
        error = np.abs(frames[i][..., ::-1].astype(int) - shape_frame(i)).mean()
        assert error < 8, (i, error)


def run_main(capsys, *args: str) -> str:
    """``aukit-prepare`` in process: the one message it prints, checked to end with exit 2."""
    with pytest.raises(SystemExit) as exit_info:
        prepare_module.main(list(args))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("aukit-prepare: error: ") and "Traceback" not in err, err
    return err


def test_bad_trees_and_flags_end_in_one_message(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("AUKIT_DEBUG", raising=False)
    out = str(tmp_path / "out")
    for dataset in ("bp4d", "disfa", "folder"):
        assert f"--data-root {tmp_path / 'nope'} does not exist" in run_main(
            capsys, "--dataset", dataset, "--data-root", str(tmp_path / "nope"), "--out", out)
    (tmp_path / "empty").mkdir()
    assert "no images under" in run_main(capsys, "--dataset", "folder", "--data-root",
                                         str(tmp_path / "empty"), "--out", out)
    assert "give the BP4D root" in run_main(capsys, "--dataset", "bp4d", "--data-root",
                                            str(tmp_path / "empty"), "--out", out)
    disfa = make_disfa(tmp_path / "disfa")
    err = run_main(capsys, "--dataset", "bp4d", "--data-root", str(disfa), "--out", out)
    assert "a DISFA tree" in err and "use --dataset disfa" in err
    assert "--frames-root" in run_main(capsys, "--dataset", "disfa", "--data-root", str(disfa),
                                       "--out", out, "--frame-offset", "0")


def test_a_folder_without_faces_ends_in_one_message(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("AUKIT_DEBUG", raising=False)
    monkeypatch.setattr(prepare_module, "detect_faces", lambda frames, device: [None] * len(frames))
    for i in range(3):
        cv2.imwrite(str(tmp_path / f"{i}.png"), np.full((64, 64, 3), 128, np.uint8))
    err = run_main(capsys, "--dataset", "folder", "--data-root", str(tmp_path), "--out",
                   str(tmp_path / "out"), "--workers", "1", "--landmarks", "template")
    assert "found no face in any of the 3 frames" in err and "no_face.txt" in err
