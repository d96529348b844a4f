"""SynthAU serves the landmarks the toolkit's landmark stage finds on each render (not the
renderer's), finds them once per face and reads them from the cache afterwards."""

import numpy as np
import pytest

import aukit.data.synthau_landmarks as synthau_landmarks
from aukit.au_maps import canonical_landmarks
from aukit.data.datamodules import SynthAUDataModule, UnlabeledFaceDataModule
from aukit.data.datasets import SynthAUDataset
from aukit.data.synthau import SynthAU
from aukit.data.synthau_landmarks import SynthAULandmarks
from aukit.data.transforms import eval_transform

S = 64


def iod_error(found: np.ndarray, exact: np.ndarray) -> float:
    """Mean point error ``[..., 68, 2]`` in inter-ocular distances of ``exact``."""
    iod = np.linalg.norm(exact[..., 36:42, :].mean(-2) - exact[..., 42:48, :].mean(-2), axis=-1)
    return float((np.linalg.norm(found - exact, axis=-1).mean(-1) / iod).mean())


def dataset(landmarks: str, cache, subjects=(500, 501)) -> SynthAUDataset:
    return SynthAUDataset(list(subjects), 3, None, eval_transform(S, normalize=False),
                          landmarks=landmarks, landmark_cache=str(cache))


def test_default_synthau_data_serve_detected_landmarks_with_the_detectors_error():
    dm = SynthAUDataModule(image_size=S, synthau_samples_per_subject=1,
                           synthau_eval_samples_per_subject=2)
    exact = SynthAUDataModule(image_size=S, synthau_samples_per_subject=1,
                              synthau_eval_samples_per_subject=2, landmarks="exact")
    dm.prepare_data()
    served = next(iter(dm.test_dataloader()))["landmarks"].numpy()
    truth = next(iter(exact.test_dataloader()))["landmarks"].numpy()
    error = iod_error(served, truth)
    # dlib68's error on these renders, about what it does on real faces; never zero
    assert 0.01 < error < 0.15, error


def test_detected_landmarks_are_found_once_then_read_from_the_cache(tmp_path, monkeypatch):
    first = dataset("dlib68", tmp_path)
    counts = first.prepare_landmarks()
    assert counts == {"faces": 6, "detected": 6, "template": 0}
    served = np.stack([first[i]["landmarks"].numpy() for i in range(len(first))])

    def no_detector(*args, **kwargs):
        raise AssertionError("the landmark stage ran again")

    monkeypatch.setattr(synthau_landmarks, "find_landmarks", no_detector)
    again = dataset("dlib68", tmp_path)
    assert again.prepare_landmarks()["detected"] == 0
    np.testing.assert_array_equal(
        np.stack([again[i]["landmarks"].numpy() for i in range(len(again))]), served)
    exact = dataset("exact", tmp_path)
    truth = np.stack([exact[i]["landmarks"].numpy() for i in range(len(exact))])
    assert 0.01 < iod_error(served, truth) < 0.15


def test_a_face_without_a_fit_gets_the_template_and_is_counted(tmp_path, monkeypatch):
    monkeypatch.setattr(synthau_landmarks, "find_landmarks",
                        lambda images, landmarker, device="cpu": [None] * len(images))
    landmarks = SynthAULandmarks(SynthAU(), "dlib68", tmp_path)
    assert landmarks.prepare([(500, 0, 0), (500, 1, 0)], progress=False) == \
        {"faces": 2, "detected": 2, "template": 2}
    sample = SynthAU().sample(500, 0)
    np.testing.assert_array_equal(landmarks((500, 0, 0), sample), canonical_landmarks(256))
    # counted again from the cache
    assert landmarks.prepare([(500, 0, 0)], progress=False)["template"] == 1


def test_a_face_not_prepared_is_detected_when_first_read(tmp_path):
    lazy = dataset("dlib68", tmp_path, subjects=(502,))
    item = lazy[0]["landmarks"].numpy()
    assert lazy.landmarks.path((502, 0, 0)).exists()
    truth = dataset("exact", tmp_path, subjects=(502,))[0]["landmarks"].numpy()
    assert 0.01 < iod_error(item, truth) < 0.15


def test_pretraining_pool_and_probe_serve_detected_landmarks():
    kwargs = dict(image_size=S, batch_size=4, faces_per_subject=2, views=1,
                  synthau_subjects=2, synthau_samples_per_subject=2,
                  probe=dict(samples_per_subject=1))
    dm, exact = UnlabeledFaceDataModule(**kwargs), UnlabeledFaceDataModule(**kwargs,
                                                                           landmarks="exact")
    dm.prepare_data()
    dm.probe_datamodule().prepare_data()  # run_probe does this before the first probe
    for a, b in ((dm, exact), (dm.probe_datamodule(), exact.probe_datamodule())):
        loader_a = a.train_dataloader() if a is dm else a.split_dataloader("val")
        loader_b = b.train_dataloader() if b is exact else b.split_dataloader("val")
        served, truth = next(iter(loader_a)), next(iter(loader_b))
        assert served["subject"] == truth["subject"]
        assert 0.01 < iod_error(served["landmarks"].numpy(), truth["landmarks"].numpy()) < 0.15


@pytest.mark.parametrize("make", [
    lambda: SynthAUDataModule(image_size=S, landmarks="renderer"),
    lambda: UnlabeledFaceDataModule(image_size=S, landmarks="renderer"),
])
def test_unknown_landmark_source_is_refused_with_the_choices(make):
    with pytest.raises(ValueError, match="--data.landmarks must be one of auto, dlib68, exact"):
        make()


def test_exact_landmarks_are_refused_for_a_folder(tmp_path):
    with pytest.raises(ValueError, match="--data.landmarks must be one of auto, dlib68, template "
                                         "for --data.source"):
        UnlabeledFaceDataModule(source=str(tmp_path), image_size=S, landmarks="exact")
