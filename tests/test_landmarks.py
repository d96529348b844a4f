"""The 68-point landmark stage on real photos (scikit-image's astronaut, mirrored, two faces side
by side), and its use in prepare, predict and unlabeled folders."""

import csv
import json

import cv2
import numpy as np
import pytest
import torch
from skimage.data import astronaut
from test_export import save_finetune

from aukit import landmarks as landmarks_module
from aukit.au import FLIP_PERMUTATION
from aukit.au_maps import canonical_landmarks
from aukit.data import prepare as prepare_module
from aukit.data.datamodules import UnlabeledFaceDataModule
from aukit.data.datasets import ImageFolderDataset
from aukit.data.manifest import load_landmarks
from aukit.data.prepare import align_with_landmarks, prepare, template_points
from aukit.data.transforms import eval_transform
from aukit.inference import load_predictor
from aukit.landmarks import TEMPLATE, Landmarker, dlib_available, five_points, resolve_source
from aukit.predict import FaceDetector, predict

pytest.importorskip("dlib")
# face_recognition_models is located, not imported: its __init__ needs pkg_resources
pytestmark = pytest.mark.skipif(not dlib_available(), reason="face-recognition-models missing")


@pytest.fixture(scope="module")
def detector() -> FaceDetector:
    return FaceDetector()


@pytest.fixture(scope="module")
def dlib68() -> Landmarker:
    return Landmarker("dlib68")


def faces_with_landmarks(image, detector, landmarker):
    """``[(box [4], MTCNN points [5, 2], landmarks [68, 2])]`` of every face, left to right."""
    (faces,) = detector([image])
    return [(box, points, landmarker(image, box, points)) for box, _, points in faces]


def test_the_astronaut_gets_68_points_on_her_face_in_the_right_order(detector, dlib68):
    ((box, points, landmarks),) = faces_with_landmarks(astronaut(), detector, dlib68)
    assert landmarks.shape == (68, 2)
    # the jaw line reaches a little past MTCNN's box (chin below it): 10 % of the box's size
    margin = 0.1 * (box[2:] - box[:2])
    assert (landmarks >= box[:2] - margin).all() and (landmarks <= box[2:] + margin).all()
    brows, eyes, nose, mouth, chin = (landmarks[17:27, 1].mean(), landmarks[36:48, 1].mean(),
                                      landmarks[30, 1], landmarks[48:68, 1].mean(),
                                      landmarks[8, 1])
    assert brows < eyes < nose < mouth < chin
    # the subject's right eye (36-41) is on the image's left
    assert landmarks[36:42, 0].mean() < landmarks[42:48, 0].mean()
    iod = np.linalg.norm(points[1] - points[0])
    eye_error = np.linalg.norm(five_points(landmarks)[:2] - points[:2], axis=1)
    assert eye_error.max() < 0.1 * iod, eye_error / iod


def test_the_flip_permutation_maps_the_mirrored_face_onto_the_original(detector, dlib68):
    image = astronaut()
    ((_, _, original),) = faces_with_landmarks(image, detector, dlib68)
    ((_, _, mirrored),) = faces_with_landmarks(np.ascontiguousarray(image[:, ::-1]), detector,
                                               dlib68)
    back = mirrored[list(FLIP_PERMUTATION)]
    back[:, 0] = image.shape[1] - back[:, 0]
    error = np.linalg.norm(back - original, axis=1)
    assert error.mean() < 1.5 and error.max() < 4, error  # px, IOD 43 px


def test_two_faces_give_two_landmark_sets_each_in_its_box(detector, dlib68):
    face = astronaut()[20:220, 120:330]
    image = np.ascontiguousarray(np.concatenate([face, face[:, ::-1]], axis=1))
    found = faces_with_landmarks(image, detector, dlib68)
    assert len(found) == 2
    for box, _, landmarks in found:
        assert landmarks is not None
        assert box[0] - 5 < landmarks[:, 0].mean() < box[2] + 5
    assert found[0][2][:, 0].max() < face.shape[1] < found[1][2][:, 0].min()


def test_sources_template_and_a_failed_fit_give_none(detector, dlib68, monkeypatch, capsys):
    image = astronaut()
    (((box, _, points),),) = detector([image])
    assert Landmarker(TEMPLATE)(image, box, points) is None
    upside_down = points[[3, 4, 2, 0, 1]]  # MTCNN points that the fit cannot agree with
    assert dlib68(image, box, upside_down) is None
    assert resolve_source("auto") == "dlib68"
    with pytest.raises(ValueError, match="landmarks must be one of"):
        resolve_source("mediapipe")
    monkeypatch.setattr(landmarks_module, "dlib_available", lambda: False)
    assert resolve_source("auto") == TEMPLATE
    assert "faces get the template" in capsys.readouterr().err  # one line says so
    with pytest.raises(ImportError, match="pip install dlib-bin face-recognition-models"):
        resolve_source("dlib68")


def test_alignment_on_the_landmarks_keeps_them_in_crop_pixels(detector, dlib68):
    image = astronaut()
    (((box, _, points),),) = detector([image])
    crop, landmarks, source, matrix = align_with_landmarks(image, box, points, dlib68, 128)
    assert crop.shape == (128, 128, 3) and source == "dlib68"
    # least squares onto the template: her eyes land on its eyes within a few pixels
    assert np.linalg.norm(five_points(landmarks)[:2] - template_points(128)[:2], axis=1).max() < 4
    again = dlib68(crop, np.array([16.0, 16.0, 112.0, 112.0]), five_points(landmarks))
    assert np.abs(again - landmarks).mean() < 2  # the crop's own fit agrees
    # the matrix maps the image onto the crop: the crop's landmarks map back onto the image's fit
    back = (landmarks - matrix[:, 2]) @ np.linalg.inv(matrix[:, :2]).T
    np.testing.assert_allclose(back, dlib68(image, box, points), atol=1e-3)
    _, template, source, _ = align_with_landmarks(image, box, points, Landmarker(TEMPLATE), 128)
    assert source == TEMPLATE and np.array_equal(template, canonical_landmarks(128))


def test_prepare_stores_crop_landmarks_and_lists_failed_fits(tmp_path, monkeypatch):
    faces = tmp_path / "faces"
    faces.mkdir()
    cv2.imwrite(str(faces / "a.png"), cv2.cvtColor(astronaut(), cv2.COLOR_RGB2BGR))
    cv2.imwrite(str(faces / "b.png"), np.full((512, 512, 3), 128, np.uint8))
    detect = prepare_module.detect_faces

    def flat_face_upside_down(frames, device):  # "b" gets a face whose points cannot fit
        (face,) = detect([f for f in frames if f[0].endswith("a.jpg")], device)
        box, score, points = face
        return [face if name.endswith("a.jpg") else (box, score, points[[3, 4, 2, 0, 1]])
                for name, _ in frames]

    monkeypatch.setattr(prepare_module, "detect_faces", flat_face_upside_down)
    out = tmp_path / "out"
    counts = prepare("folder", faces, out, size=64)
    assert counts == {"frames": 2, "aligned": 2, "no_face": 0, "no_frame": 0,
                      "template_landmarks": 1}
    with (out / "crops.csv").open(newline="") as f:
        sources = {row["crop"]: row["landmarks"] for row in csv.DictReader(f)}
    assert sources == {"crops/a.jpg": "dlib68", "crops/b.jpg": "template"}
    landmarks = load_landmarks(out / "crops" / "a.npy")
    assert ((landmarks > 0) & (landmarks < 64)).all()
    assert not (out / "crops" / "b.npy").exists()
    assert (out / "template_landmarks.txt").read_text().endswith("\tcrops/b.jpg\n")
    assert "landmarks: dlib68, 1 crops fitted; 1 where the fit failed" in (
        out / "prepare_report.txt").read_text()
    with pytest.raises(ValueError, match="prepared with"):  # crops of two sources would mix
        prepare("folder", faces, out, size=64, landmarks=TEMPLATE)


def test_an_unlabeled_folder_gets_its_landmarks_sidecar_once(tmp_path):
    folder = tmp_path / "faces" / "subject1"
    folder.mkdir(parents=True)
    crop = cv2.resize(astronaut()[30:250, 120:340], (128, 128))
    for i in range(2):
        cv2.imwrite(str(folder / f"{i}.png"), cv2.cvtColor(np.roll(crop, i, 1), cv2.COLOR_RGB2BGR))
    data = UnlabeledFaceDataModule(source=str(tmp_path / "faces"), image_size=64, batch_size=2,
                                   faces_per_subject=0, landmarks="dlib68")
    data.prepare_data()
    sidecar = tmp_path / "faces" / "landmarks.json"
    entries = json.loads(sidecar.read_text())
    assert sorted(entries) == ["subject1/0.png", "subject1/1.png"]
    written = sidecar.stat().st_mtime_ns
    data.prepare_data()  # cached: not fitted again
    assert sidecar.stat().st_mtime_ns == written
    dataset = ImageFolderDataset(tmp_path / "faces", eval_transform(128), views=1)
    landmarks = dataset.landmarks_for(dataset.images[0], 128, 128)
    np.testing.assert_allclose(landmarks, entries["subject1/0.png"])
    assert ((landmarks > 0) & (landmarks < 128)).all()
    assert landmarks[36:48, 1].mean() < landmarks[48:68, 1].mean()  # in image pixels, upright


def test_predict_feeds_each_face_its_landmarks_and_says_which(tmp_path):
    ckpt = save_finetune(tmp_path / "ft.ckpt")
    image = tmp_path / "astronaut.png"
    cv2.imwrite(str(image), cv2.cvtColor(astronaut(), cv2.COLOR_RGB2BGR))
    rows = {}
    for source in ("dlib68", TEMPLATE):
        summary = predict(image, ckpt, tmp_path / source, visualize=True, progress=False,
                          landmarks=source)
        with summary["csv"].open(newline="") as f:
            (rows[source],) = list(csv.DictReader(f))
        assert rows[source]["landmarks"] == source
        assert (tmp_path / source / "visualize" / "astronaut_face0.png").is_file()
    probs = {s: [float(v) for k, v in r.items() if k.endswith("_prob")] for s, r in rows.items()}
    assert probs["dlib68"] != probs[TEMPLATE]  # the maps moved with the face's landmarks
    predictor = load_predictor(ckpt)
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():  # given the template, the predictor matches its baked-in default
        given = predictor(images, predictor.landmarks.expand(2, -1, -1))
        np.testing.assert_allclose(given[1], predictor(images)[1])


def test_find_landmarks_answers_none_for_a_frame_smaller_than_a_face(dlib68):
    image = astronaut()
    tiny = np.zeros((16, 16, 3), np.uint8)
    found = landmarks_module.find_landmarks([tiny, image, tiny], dlib68)
    assert found[0] is None and found[2] is None
    (face,) = landmarks_module.detect_faces([("x", image)])
    np.testing.assert_allclose(found[1], dlib68(image, face[0], face[2]))
