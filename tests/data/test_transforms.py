import cv2
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from aukit.au import FLIP_PERMUTATION
from aukit.au_maps import canonical_landmarks
from aukit.data.transforms import (
    IMAGENET_MEAN,
    FaceTransform,
    denormalize,
    eval_transform,
    hflip_face,
    pretrain_transform,
    train_transform,
)

IN_SIZE, OUT_SIZE = 96, 64
# right eye outer corner, right brow, right mouth corner, right jaw, chin, nose tip: the first
# four have an undrawn mirror partner, so a wrong flip permutation lands on black
DOTS = (36, 19, 48, 2, 8, 30)


@pytest.fixture(scope="module")
def dotted_face() -> tuple[np.ndarray, np.ndarray]:
    """A black image with white dots on a few canonical landmarks (moved to pixel centres)."""
    landmarks = canonical_landmarks(IN_SIZE)
    image = np.zeros((IN_SIZE, IN_SIZE, 3), np.uint8)
    for k in DOTS:
        x, y = landmarks[k].astype(int)
        cv2.circle(image, (int(x), int(y)), 2, (255, 255, 255), -1)
        landmarks[k] = (x + 0.5, y + 0.5)
    return image, landmarks


def dot_offset(gray: np.ndarray, xy: np.ndarray,
               radius: int = 5) -> tuple[float, np.ndarray] | None:
    """Brightness mass and centroid offset of the dot near ``xy``; None near the border."""
    x0, y0 = np.floor(xy).astype(int)
    if not (radius <= x0 < gray.shape[1] - radius and radius <= y0 < gray.shape[0] - radius):
        return None
    patch = gray[y0 - radius:y0 + radius + 1, x0 - radius:x0 + radius + 1]
    weight = np.clip(patch - np.median(patch), 0, None)  # brightness jitter shifts the background
    ys, xs = np.mgrid[y0 - radius:y0 + radius + 1, x0 - radius:x0 + radius + 1] + 0.5
    mass = weight.sum()
    centroid = np.array([(weight * xs).sum(), (weight * ys).sum()]) / max(mass, 1e-9)
    return mass, centroid - xy


def check_on_dots(out: dict[str, torch.Tensor], flipped: bool) -> list[np.ndarray]:
    """Offsets [2] from each visible transformed dot landmark to the dot's centroid."""
    gray = denormalize(out["image"]).mean(0).numpy()
    landmarks = out["landmarks"].numpy()
    offsets = []
    for k in DOTS:
        found = dot_offset(gray, landmarks[FLIP_PERMUTATION[k] if flipped else k])
        if found is None:  # the crop or rotation pushed it out of view
            continue
        mass, offset = found
        assert mass > 200 and np.abs(offset).max() < 1.5, (k, flipped, mass, offset)
        offsets.append(offset)
        partner = FLIP_PERMUTATION[k]
        if partner != k:  # the index the dot does not belong to sits on black
            other = dot_offset(gray, landmarks[k if flipped else partner])
            assert other is None or other[0] < 0.2 * mass
    return offsets


@pytest.mark.parametrize("train,strength", [(False, "weak"), (True, "weak"), (True, "strong")])
@pytest.mark.parametrize("hflip", [0.0, 1.0])
def test_landmarks_stay_on_the_image_content(dotted_face, train, strength, hflip):
    image, landmarks = dotted_face
    transform = FaceTransform(OUT_SIZE, train=train, strength=strength, hflip=hflip, seed=7)
    offsets = [o for _ in range(6)
               for o in check_on_dots(transform(image, landmarks), flipped=train and hflip == 1.0)]
    assert len(offsets) >= 0.7 * 6 * len(DOTS)
    # no systematic shift: a half-pixel convention slip (e.g. x' = W - 1 - x) shows up here
    assert np.abs(np.mean(offsets, axis=0)).max() < 0.25


def test_random_flips_happen_and_stay_consistent(dotted_face):
    image, landmarks = dotted_face
    transform = train_transform(OUT_SIZE, seed=3)
    flips = []
    for _ in range(12):
        out = transform(image, landmarks)
        gray = denormalize(out["image"]).mean(0).numpy()
        # the right-eye dot is on the image's left half unless the image was mirrored
        flips.append(gray[:, : OUT_SIZE // 2].sum() < gray[:, OUT_SIZE // 2:].sum())
        check_on_dots(out, flipped=flips[-1])
        assert out["landmarks"][36, 0] < out["landmarks"][45, 0]  # subject's right stays left
    assert 0 < sum(flips) < len(flips)


def test_eval_transform_is_an_exact_resize(dotted_face):
    image, landmarks = dotted_face
    out = eval_transform(OUT_SIZE)(image[:, :80], landmarks)
    expected = landmarks * np.array([OUT_SIZE / 80, OUT_SIZE / IN_SIZE], np.float32)
    np.testing.assert_allclose(out["landmarks"].numpy(), expected, rtol=1e-5)


@pytest.mark.parametrize("make", [eval_transform, train_transform, pretrain_transform])
def test_output_shapes_and_dtypes(make):
    image = np.random.default_rng(0).integers(0, 256, (80, 72, 3), dtype=np.uint8)
    out = make(OUT_SIZE)(image, canonical_landmarks((80, 72)))
    assert set(out) == {"image", "landmarks"}
    assert out["image"].shape == (3, OUT_SIZE, OUT_SIZE) and out["image"].dtype == torch.float32
    assert out["landmarks"].shape == (68, 2) and out["landmarks"].dtype == torch.float32
    assert out["image"].is_contiguous() and abs(out["image"].mean()) < 3


def test_missing_landmarks_use_the_canonical_face():
    image = np.zeros((IN_SIZE, IN_SIZE, 3), np.uint8)
    out = eval_transform(OUT_SIZE)(image)
    np.testing.assert_allclose(out["landmarks"].numpy(), canonical_landmarks(OUT_SIZE), rtol=1e-5)


def test_deterministic_given_a_seed(dotted_face):
    image, landmarks = dotted_face
    runs = [[t(image, landmarks) for _ in range(3)]
            for t in (pretrain_transform(OUT_SIZE, seed=5), pretrain_transform(OUT_SIZE, seed=5),
                      pretrain_transform(OUT_SIZE, seed=6))]
    for a, b in zip(runs[0], runs[1], strict=True):
        torch.testing.assert_close(a, b)
    assert not all(torch.equal(a["landmarks"], c["landmarks"])
                   for a, c in zip(runs[0], runs[2], strict=True))


class _Faces(Dataset):
    def __init__(self, transform: FaceTransform) -> None:
        self.transform = transform

    def __len__(self) -> int:
        return 4

    def __getitem__(self, index: int) -> torch.Tensor:
        image = np.zeros((IN_SIZE, IN_SIZE, 3), np.uint8)
        return self.transform(image, canonical_landmarks(IN_SIZE))["landmarks"]


def test_dataloader_workers_get_different_streams():
    loader = DataLoader(_Faces(train_transform(OUT_SIZE, seed=1)), batch_size=1, num_workers=2,
                        multiprocessing_context="fork")
    first, second = list(loader)[:2]  # items 0 and 1 come from different workers
    assert not torch.equal(first, second)


def test_hflip_face_is_exact_and_an_involution():
    image = torch.arange(2 * 3 * 4 * 5, dtype=torch.float32).reshape(2, 3, 4, 5)
    landmarks = torch.rand(2, 68, 2) * 5
    flipped_image, flipped = hflip_face(image, landmarks)
    assert torch.equal(flipped_image, image.flip(-1))
    expected = torch.stack([5 - landmarks[:, 45, 0], landmarks[:, 45, 1]], dim=-1)
    assert torch.equal(flipped[:, 36], expected)
    again_image, again = hflip_face(flipped_image, flipped)
    assert torch.equal(again_image, image) and torch.allclose(again, landmarks)


def test_denormalize_inverts_the_normalisation():
    mean = torch.tensor(IMAGENET_MEAN)[:, None, None]
    image = torch.zeros(2, 3, 4, 4)
    torch.testing.assert_close(denormalize(image), (255 * mean).expand(2, 3, 4, 4))
    with pytest.raises(ValueError, match=r"\[\.\.\., 3, H, W\]"):
        denormalize(torch.zeros(4, 4))


def test_bad_inputs_are_clear_errors():
    transform = eval_transform(OUT_SIZE)
    image = np.zeros((IN_SIZE, IN_SIZE, 3), np.uint8)
    with pytest.raises(ValueError, match="uint8 RGB"):
        transform(image.astype(np.float32))
    with pytest.raises(ValueError, match="uint8 RGB"):
        transform(image[..., 0])
    with pytest.raises(ValueError, match=r"\[68, 2\]"):
        transform(image, np.zeros((5, 2)))
    with pytest.raises(ValueError, match="strength"):
        FaceTransform(OUT_SIZE, train=True, strength="medium")
    with pytest.raises(ValueError, match="hflip"):
        FaceTransform(OUT_SIZE, train=True, hflip=1.5)
