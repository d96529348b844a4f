"""Predict on the astronaut photo, a written video and a folder: rows, faces, pictures, errors."""

import csv
from pathlib import Path

import cv2
import numpy as np
import pytest
import skimage.data
import torch
from test_export import AUS, save_finetune
from test_prepare import cut_avi

from aukit.predict import LINE_HEIGHT, Face, _text_origin, annotate, main, predict

# MTCNN's box of the astronaut's face in skimage.data.astronaut() (512x512), checked by eye
FACE_X, FACE_Y = (181, 268), (62, 172)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    return save_finetune(tmp_path_factory.mktemp("ckpt") / "ft.ckpt")


@pytest.fixture(scope="module")
def astronaut(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("img") / "astronaut.png"
    cv2.imwrite(str(path), cv2.cvtColor(skimage.data.astronaut(), cv2.COLOR_RGB2BGR))
    return path


def _rows(path: Path) -> list[dict]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def _assert_au_columns(row: dict) -> None:
    for name in AUS:
        p = float(row[f"{name}_prob"])
        assert 0.0 <= p <= 1.0 and int(row[name]) == int(p >= 0.5)


def test_the_astronaut_face_is_found_scored_and_visualised(ckpt, astronaut, tmp_path):
    summary = predict(astronaut, ckpt, tmp_path, visualize=True, progress=False)
    rows = _rows(summary["csv"])
    assert len(rows) == 1 and summary["frames"] == 1 and summary["faces"] == 1
    row = rows[0]
    assert (row["source"], row["frame"], row["time_s"], row["face"], row["status"]) == (
        str(astronaut), "0", "", "0", "ok")
    box = [float(row[k]) for k in ("x1", "y1", "x2", "y2")]
    np.testing.assert_allclose(box, [FACE_X[0], FACE_Y[0], FACE_X[1], FACE_Y[1]], atol=12)
    _assert_au_columns(row)
    picture = cv2.imread(str(tmp_path / "visualize" / "astronaut_face0.png"))
    assert picture is not None and picture.shape[0] >= 160  # face tile plus activation grid


def test_a_video_gives_one_row_per_frame_and_empty_cells_without_a_face(ckpt, tmp_path):
    video, fps = tmp_path / "clip.avi", 10.0
    face = cv2.resize(cv2.cvtColor(skimage.data.astronaut(), cv2.COLOR_RGB2BGR), (256, 256))
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), fps, (256, 256))
    for frame in (face, face, np.full_like(face, 90), face):
        writer.write(frame)
    writer.release()
    summary = predict(video, ckpt, tmp_path / "out", batch_size=3, visualize=True, every=2,
                      video_out=tmp_path / "annotated.avi", progress=False)
    rows = _rows(summary["csv"])
    assert [r["frame"] for r in rows] == ["0", "1", "2", "3"]
    assert [float(r["time_s"]) for r in rows] == pytest.approx([0.0, 0.1, 0.2, 0.3])
    assert [r["status"] for r in rows] == ["ok", "ok", "no_face", "ok"]
    assert all(rows[2][k] == "" for k in ("face", "x1", *AUS, *(f"{a}_prob" for a in AUS)))
    for row in rows[:2] + rows[3:]:
        _assert_au_columns(row)
    pictures = sorted(p.name for p in (tmp_path / "out" / "visualize").iterdir())
    assert pictures == ["clip_frame000000_face0.png"]  # every 2nd frame; frame 2 has no face
    annotated = cv2.VideoCapture(str(tmp_path / "annotated.avi"))
    assert int(annotated.get(cv2.CAP_PROP_FRAME_COUNT)) == 4


def test_the_annotated_frame_shows_the_landmarks_where_they_are_in_the_frame():
    # a crop at half scale, shifted by (-40, -20): crop point (10, 30) is frame point (100, 100)
    matrix = np.array([[0.5, 0.0, -40.0], [0.0, 0.5, -20.0]])
    landmarks = np.tile(np.array([[10.0, 30.0]], np.float32), (68, 1))
    face = Face(np.array([80.0, 80.0, 120.0, 120.0]), 0.99, np.zeros((64, 64, 3), np.uint8),
                landmarks, "dlib68", matrix, probs=np.zeros(len(AUS)))
    out = annotate(np.zeros((200, 200, 3), np.uint8), [face], AUS)
    assert out[100, 100, 1] > 0 and out[95:106, 95:106].any(axis=2).sum() < 20  # a dot, drawn
    assert out[100, 104:115].sum() == 0  # nothing else near it (the box is at x 80 and 120)


def test_a_folder_numbers_several_faces_and_reports_unreadable_files(ckpt, tmp_path):
    folder = tmp_path / "faces"
    folder.mkdir()
    face = cv2.cvtColor(skimage.data.astronaut(), cv2.COLOR_RGB2BGR)[20:220, 120:330]
    cv2.imwrite(str(folder / "a_two.jpg"), np.concatenate([face, face], axis=1))
    (folder / "b_broken.png").write_text("not an image")
    rows = _rows(predict(folder, ckpt, tmp_path / "out", progress=False)["csv"])
    assert [(Path(r["source"]).name, r["face"], r["status"]) for r in rows] == [
        ("a_two.jpg", "0", "ok"), ("a_two.jpg", "1", "ok"), ("b_broken.png", "", "unreadable")]
    assert float(rows[0]["x1"]) < face.shape[1] <= float(rows[1]["x1"])  # left to right


def test_bad_input_is_refused_clearly(ckpt, astronaut, tmp_path, capsys):
    with pytest.raises(FileNotFoundError, match="does not exist.*image, a folder"):
        predict(tmp_path / "missing.mp4", ckpt, tmp_path)
    notes = tmp_path / "notes.txt"
    notes.write_text("hello")
    with pytest.raises(ValueError, match="could not be decoded as an image or video"):
        predict(notes, ckpt, tmp_path)
    stage1 = save_finetune(tmp_path / "s1.ckpt", stage="pretrain")
    with pytest.raises(ValueError, match="no AU head"):
        predict(astronaut, stage1, tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        main(["--input", str(notes), "--ckpt", str(ckpt), "--out", str(tmp_path)])
    assert exit_info.value.code == 2 and "could not be decoded" in capsys.readouterr().err


def test_a_truncated_video_s_cut_last_frame_is_unreadable_not_a_copy(ckpt, tmp_path):
    video = tmp_path / "cut.avi"
    face = cv2.resize(cv2.cvtColor(skimage.data.astronaut(), cv2.COLOR_RGB2BGR), (256, 256))
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (256, 256))
    for _ in range(4):
        writer.write(face)
    writer.release()
    cut_avi(video, 1)  # the download stopped in the middle of the last frame
    rows = _rows(predict(video, ckpt, tmp_path / "out", progress=False)["csv"])
    assert [r["status"] for r in rows] == ["ok", "ok", "ok", "unreadable"]


def test_an_image_smaller_than_a_face_is_no_face_and_the_others_are_kept(ckpt, tmp_path):
    folder = tmp_path / "faces"
    folder.mkdir()
    cv2.imwrite(str(folder / "a.png"), cv2.cvtColor(skimage.data.astronaut(), cv2.COLOR_RGB2BGR))
    cv2.imwrite(str(folder / "b_tiny.png"), np.full((16, 16, 3), 100, np.uint8))
    rows = _rows(predict(folder, ckpt, tmp_path / "out", progress=False)["csv"])
    assert [(Path(r["source"]).name, r["status"]) for r in rows] == [
        ("a.png", "ok"), ("b_tiny.png", "no_face")]
    rows = _rows(predict(folder / "b_tiny.png", ckpt, tmp_path / "alone", progress=False)["csv"])
    assert [r["status"] for r in rows] == ["no_face"]


def test_a_gpu_the_machine_lacks_ends_in_one_message(ckpt, astronaut, tmp_path, capsys,
                                                    monkeypatch):
    monkeypatch.delenv("AUKIT_DEBUG", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit) as exit_info:
        main(["--input", str(astronaut), "--ckpt", str(ckpt), "--out", str(tmp_path),
              "--device", "cuda"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "needs a CUDA GPU" in err and "Traceback" not in err


@pytest.mark.parametrize("box", [(80, 170, 120, 196), (170, 170, 198, 196)])
def test_the_au_text_stays_in_the_frame_near_its_edges(box):
    """A face at the bottom (text above it) or in the bottom-right corner (shifted left): every
    line is drawn whole, as on a frame with room below; beside a face as tall as the frame the
    text ends inside it."""
    face = Face(np.array(box, float), 0.99, np.zeros((64, 64, 3), np.uint8),
                np.zeros((68, 2), np.float32), "dlib68", np.array([[1.0, 0, 0], [0, 1.0, 0]]),
                probs=np.ones(len(AUS)))
    drawn = annotate(np.zeros((200, 200, 3), np.uint8), [face], AUS)[..., 1] > 0
    roomy = annotate(np.zeros((400, 400, 3), np.uint8), [face], AUS)[..., 1] > 0
    assert drawn.sum() == roomy.sum()  # nothing cut off
    x, top = _text_origin(["face 0", "AU1 0.90", "AU2 0.90"], (80, 4, 120, 196), (200, 200), 0.45)
    assert top + 3 * LINE_HEIGHT + 4 <= 200 and x == 80


def test_a_truncated_jpeg_is_unreadable_and_a_folder_says_it_skips_videos(ckpt, tmp_path, capsys):
    folder = tmp_path / "faces"
    folder.mkdir()
    face = cv2.cvtColor(skimage.data.astronaut(), cv2.COLOR_RGB2BGR)
    cv2.imwrite(str(folder / "a.jpg"), face)
    data = (folder / "a.jpg").read_bytes()
    (folder / "b_cut.jpg").write_bytes(data[:len(data) // 2])  # OpenCV fills the rest grey
    writer = cv2.VideoWriter(str(folder / "c.avi"), cv2.VideoWriter_fourcc(*"MJPG"), 10.0,
                             (64, 64))
    writer.write(np.zeros((64, 64, 3), np.uint8))
    writer.release()
    rows = _rows(predict(folder, ckpt, tmp_path / "out", progress=False)["csv"])
    assert [(Path(r["source"]).name, r["status"]) for r in rows] == [
        ("a.jpg", "ok"), ("b_cut.jpg", "unreadable")]
    err = capsys.readouterr().err
    assert "its 1 video(s)" in err and "give each as --input" in err


def test_an_image_and_a_video_of_one_name_get_folders_of_their_own(ckpt, astronaut, tmp_path,
                                                                    monkeypatch):
    monkeypatch.chdir(tmp_path)
    image = tmp_path / "clip.png"
    image.write_bytes(astronaut.read_bytes())
    video = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (64, 64))
    writer.write(np.zeros((64, 64, 3), np.uint8))
    writer.release()
    for path in (image, video):
        main(["--input", str(path), "--ckpt", str(ckpt), "--no-progress"])
    assert _rows(tmp_path / "predictions" / "clip.png" / "predictions.csv")[0]["status"] == "ok"
    assert _rows(tmp_path / "predictions" / "clip.avi" / "predictions.csv")[0]["status"] == \
        "no_face"
