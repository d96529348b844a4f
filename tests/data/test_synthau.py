"""SynthAU: determinism, shapes, labels, splits, AU locality, base rates and the grid CLI."""

import cv2
import numpy as np
import pytest

from aukit.au import ACTION_UNITS, ALL_AUS
from aukit.data.synthau import (
    INTENSITY_THRESHOLD,
    RENDER_SIZE,
    SYNTHAU_SPLITS,
    Nuisance,
    SynthAU,
    main,
    split_subjects,
    unlabeled_subjects,
)


def _same(a: dict, b: dict) -> bool:
    return all(np.array_equal(a[k], b[k]) for k in ("image", "landmarks", "intensity", "labels"))


def test_same_seed_same_bytes_other_seed_differs():
    a, b = SynthAU(seed=3).sample(61, 5), SynthAU(seed=3).sample(61, 5)
    assert _same(a, b) and a["image"].tobytes() == b["image"].tobytes()
    assert not np.array_equal(a["image"], SynthAU(seed=4).sample(61, 5)["image"])


def test_independent_of_call_order():
    warm = SynthAU(seed=1, image_size=64)
    for subject, index in [(7, 0), (61, 9), (3, 2)]:
        warm.sample(subject, index)
    assert _same(warm.sample(61, 4), SynthAU(seed=1, image_size=64).sample(61, 4))


@pytest.mark.parametrize("size", [RENDER_SIZE, 64])
def test_shapes_and_dtypes(size):
    sample = SynthAU(image_size=size).sample(12, 0)
    assert sample["image"].shape == (size, size, 3) and sample["image"].dtype == np.uint8
    assert sample["landmarks"].shape == (68, 2) and sample["landmarks"].dtype == np.float32
    assert sample["intensity"].shape == (len(ALL_AUS),) and sample["intensity"].dtype == np.float32
    assert sample["labels"].shape == (len(ALL_AUS),) and sample["labels"].dtype == np.uint8
    assert sample["subject"] == "S012"


def test_small_images_scale_the_landmarks():
    big, small = SynthAU(image_size=256).sample(70, 1), SynthAU(image_size=64).sample(70, 1)
    np.testing.assert_allclose(small["landmarks"], (big["landmarks"] + 0.5) / 4 - 0.5, atol=1e-4)
    assert small["image"].mean() == pytest.approx(big["image"].mean(), abs=2)


def test_labels_and_landmarks_inside_for_default_nuisances():
    data = SynthAU(seed=0, image_size=64)
    for index in range(60):
        sample = data.sample(60 + index % 30, index)
        assert np.array_equal(sample["labels"], sample["intensity"] >= INTENSITY_THRESHOLD)
        assert ((sample["intensity"] >= 0) & (sample["intensity"] <= 5)).all()
        assert ((sample["landmarks"] >= 0) & (sample["landmarks"] <= 63)).all(), index


def test_splits_are_subject_exclusive_and_cover_all_subjects():
    subjects = [s for split in SYNTHAU_SPLITS for s in split_subjects(split)]
    assert len(subjects) == len(set(subjects))
    assert sorted(subjects) == list(range(max(subjects) + 1))
    assert split_subjects("train") == list(range(60, 90))
    with pytest.raises(ValueError, match="unknown SynthAU split 'training'"):
        split_subjects("training")


def test_the_unlabeled_pool_grows_past_the_labelled_subjects():
    assert unlabeled_subjects(10) == list(range(10))
    pool = unlabeled_subjects(300)
    assert pool == list(range(60)) + list(range(120, 360))
    labelled = {s for split in ("train", "val", "test") for s in split_subjects(split)}
    assert not labelled & set(pool)
    with pytest.raises(ValueError, match="at least one unlabeled SynthAU subject"):
        unlabeled_subjects(0)


def _centres(au: int, landmarks: np.ndarray) -> np.ndarray:
    """AU centres in pixels for a frontal, upright face (face frame == image axes)."""
    iod = np.linalg.norm(landmarks[42:48].mean(0) - landmarks[36:42].mean(0))
    return np.array([landmarks[list(c.landmarks)].mean(0) + np.array(c.offset) * iod
                     for c in ACTION_UNITS[au].centres]), iod


@pytest.mark.parametrize("au", ALL_AUS)
def test_each_au_changes_the_image_near_its_centre(au):
    data = SynthAU(seed=0)
    neutral = np.zeros(len(ALL_AUS), np.float32)
    active = neutral.copy()
    active[ALL_AUS.index(au)] = 5
    before, landmarks = data.render(65, neutral, Nuisance())
    after, _ = data.render(65, active, Nuisance())
    diff = np.abs(after.astype(np.float32) - before).sum(-1)
    centres, iod = _centres(au, landmarks)
    ys, xs = np.mgrid[:RENDER_SIZE, :RENDER_SIZE]
    distance = np.min([np.hypot(xs - cx, ys - cy) for cx, cy in centres], axis=0)
    near = diff[distance < 0.75 * iod].sum() / diff.sum()
    assert diff.sum() > 0 and near > 0.6, f"AU{au}: only {near:.0%} of the change is local"


def test_render_rejects_bad_input():
    data = SynthAU()
    with pytest.raises(ValueError, match="intensity must be"):
        data.render(0, np.zeros(3))
    with pytest.raises(ValueError, match="intensity must be"):
        data.render(0, np.full(len(ALL_AUS), 7.0))
    with pytest.raises(ValueError, match="subject must be a non-negative integer"):
        data.sample(-1, 0)
    with pytest.raises(ValueError, match="image_size"):
        SynthAU(image_size=8)


def test_base_rates_are_neither_rare_nor_common():
    data = SynthAU(seed=0, image_size=32)
    labels = np.array([data.sample(index % 90, index)["labels"] for index in range(300)])
    rates = labels.mean(0)
    assert ((rates > 0.05) & (rates < 0.7)).all(), dict(zip(ALL_AUS, rates.round(2), strict=True))


def test_grid_cli_writes_png(tmp_path):
    path = tmp_path / "grid.png"
    main(["--grid", str(path), "--rows", "1", "--cols", "2", "--size", "64", "--split", "val"])
    image = cv2.imread(str(path))
    assert image is not None and image.shape[1] == 128 and image.shape[0] > 64


def test_labels_without_rendering_and_the_disk_cache_agree_with_rendering(tmp_path):
    plain = SynthAU(seed=3, image_size=64)
    cached = SynthAU(seed=3, image_size=64, cache_dir=tmp_path)
    for subject, index in [(0, 0), (5, 7)]:
        reference = plain.sample(subject, index)
        assert np.array_equal(plain.labels(subject, index), reference["labels"])
        first, again = cached.sample(subject, index), cached.sample(subject, index)
        for key in ("image", "landmarks", "intensity", "labels"):
            assert np.array_equal(first[key], reference[key]), key
            assert np.array_equal(again[key], reference[key]), key
    assert len(list(tmp_path.rglob("*.npz"))) == 2
