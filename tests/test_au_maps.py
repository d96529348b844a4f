import math

import numpy as np
import pytest
import torch

from aukit.au import ACTION_UNITS, ALL_AUS, FLIP_PERMUTATION
from aukit.au_maps import (
    CANONICAL_LANDMARKS,
    au_attention_maps,
    au_centres,
    canonical_landmarks,
    inter_ocular_distance,
)

SIZE = 64
BILATERAL = [n for n in ALL_AUS if ACTION_UNITS[n].bilateral]
CENTRAL = [n for n in ALL_AUS if not ACTION_UNITS[n].bilateral]


def rotation(degrees: float) -> torch.Tensor:
    """A 2x2 rotation matrix (clockwise on screen, since image y points down)."""
    c, s = math.cos(math.radians(degrees)), math.sin(math.radians(degrees))
    return torch.tensor([[c, -s], [s, c]])


def faces(batch: int = 3) -> torch.Tensor:
    """Canonical faces with different scales, shifts and in-plane rotations: [B, 68, 2]."""
    base = torch.from_numpy(canonical_landmarks(SIZE)) - SIZE / 2
    return torch.stack([(0.8 + 0.1 * i) * base @ rotation(12.0 * i - 10).T
                        + torch.tensor([SIZE / 2 + 1.5 * i, SIZE / 2 - i]) for i in range(batch)])


def mirror(landmarks: torch.Tensor, width: int) -> torch.Tensor:
    """Landmarks of the horizontally flipped image, indices permuted to name the same points."""
    out = landmarks[:, list(FLIP_PERMUTATION)].clone()
    out[..., 0] = width - out[..., 0]
    return out


def test_canonical_template_is_a_plausible_aligned_face():
    unit = CANONICAL_LANDMARKS
    assert unit.shape == (68, 2) and unit.dtype == np.float32
    assert (unit > 0.05).all() and (unit < 0.99).all()
    eyes_y, mouth_y = unit[36:48, 1].mean(), unit[48:68, 1].mean()
    assert 0.33 < eyes_y < 0.42 and 0.68 < mouth_y < 0.78
    assert unit[17:27, 1].max() < eyes_y < unit[30, 1] < mouth_y < unit[8, 1]
    mirrored = unit[list(FLIP_PERMUTATION)] * [-1, 1] + [1, 0]
    np.testing.assert_allclose(mirrored, unit, atol=1e-4)
    pixels = canonical_landmarks((100, 200))
    np.testing.assert_allclose(pixels, unit * [200, 100], rtol=1e-6)
    with pytest.raises(ValueError, match="image_size"):
        canonical_landmarks((0, 10))


def test_inter_ocular_distance_scales():
    lm = faces()
    iod = inter_ocular_distance(lm)
    assert iod.shape == (3,)
    torch.testing.assert_close(inter_ocular_distance(2 * lm), 2 * iod)
    expected = (lm[:, 42:48].mean(1) - lm[:, 36:42].mean(1)).norm(dim=-1)
    torch.testing.assert_close(iod, expected)


def test_centres_follow_the_knowledge_base():
    lm = torch.from_numpy(canonical_landmarks(SIZE))[None]
    iod = inter_ocular_distance(lm)[0]
    centres, valid = au_centres(lm, [12, 1, 25])
    assert centres.shape == (1, 3, 2, 2) and valid.tolist() == [[True, True]] * 2 + [[True, False]]
    torch.testing.assert_close(centres[0, 0], lm[0, [48, 54]])  # lip corners, no offset
    # AU1 sits 0.3 IOD above the inner brow ends (the face is upright: "up" is -y)
    torch.testing.assert_close(centres[0, 1], lm[0, [21, 22]] - torch.tensor([0, 0.3]) * iod)
    torch.testing.assert_close(centres[0, 2, 0], lm[0, [62, 66]].mean(0))
    assert (centres[0, 2, 1] == 0).all()


def test_offsets_rotate_with_the_face():
    lm = faces(1)
    rot = rotation(25)
    centre = torch.tensor([SIZE / 2, SIZE / 2])
    rotated = (lm - centre) @ rot.T + centre
    before, valid = au_centres(lm, ALL_AUS)
    after, _ = au_centres(rotated, ALL_AUS)
    expected = (before - centre) @ rot.T + centre
    torch.testing.assert_close(after[:, valid], expected[:, valid], atol=1e-4, rtol=0)


def test_maps_shape_range_and_per_side():
    lm = faces()
    maps = au_attention_maps(lm, (SIZE, SIZE), (7, 9), "bp4d")
    assert maps.shape == (3, 12, 7, 9) and maps.dtype == torch.float32
    assert maps.min() >= 0 and maps.max() <= 1
    sides = au_attention_maps(lm, (SIZE, SIZE), (7, 9), "bp4d", per_side=True)
    assert sides.shape == (3, 12, 2, 7, 9)
    torch.testing.assert_close(sides.amax(2), maps)
    _, valid = au_centres(lm, "bp4d")
    assert (sides[:, ~valid] == 0).all() and (sides[:, valid] > 0).any()


def test_peak_is_at_the_centre():
    lm = faces()
    centres, valid = au_centres(lm, ALL_AUS)
    # one grid cell per pixel: the best cell centre is within half a pixel of the true centre
    sides = au_attention_maps(lm, (SIZE, SIZE), (SIZE, SIZE), ALL_AUS, per_side=True)
    flat = sides.flatten(-2).argmax(-1)  # [B, A, 2]
    peaks = torch.stack([flat % SIZE, flat // SIZE], dim=-1) + 0.5
    assert ((peaks - centres)[:, valid].abs() <= 0.5 + 1e-4).all()
    assert (sides.amax((-2, -1))[:, valid] > 0.99).all()


def test_bilateral_aus_have_two_peaks_and_central_ones_one():
    lm = torch.from_numpy(canonical_landmarks(SIZE))[None]  # symmetric about x = SIZE / 2
    aus = BILATERAL + CENTRAL
    maps = au_attention_maps(lm, (SIZE, SIZE), (SIZE, SIZE), aus, sigma=0.1)[0]  # [A, h, w]
    centres, valid = au_centres(lm, aus)
    std = 0.1 * inter_ocular_distance(lm)[0]
    for a, number in enumerate(aus):
        peaks = centres[0, a, valid[a]]
        assert len(peaks) == (2 if number in BILATERAL else 1)
        for x, y in peaks.floor().long().tolist():
            assert maps[a, y, x] > 0.9
        if number in BILATERAL:
            (x0, y0), (x1, y1) = peaks.tolist()
            assert x0 < x1 and x0 + x1 == pytest.approx(SIZE, abs=1e-3) and y0 == y1
            if x1 - x0 > 6 * std:  # well-separated peaks: a valley between them
                assert maps[a, int(y0), SIZE // 2] < 0.1


def test_width_scales_with_the_inter_ocular_distance():
    lm = faces()
    small = au_attention_maps(lm, (SIZE, SIZE), (8, 8), ALL_AUS)
    large = au_attention_maps(2 * lm, (2 * SIZE, 2 * SIZE), (8, 8), ALL_AUS)
    torch.testing.assert_close(large, small, atol=1e-5, rtol=0)
    wide = au_attention_maps(lm, (SIZE, SIZE), (8, 8), ALL_AUS, sigma=0.6)
    assert (wide >= small - 1e-6).all() and wide.mean() > small.mean()


def test_quarter_turn_turns_the_maps():
    lm = faces(2)
    # rotating the image by -90 degrees: (x, y) -> (y, W - x)
    turned = torch.stack([lm[..., 1], SIZE - lm[..., 0]], dim=-1)
    maps = au_attention_maps(lm, (SIZE, SIZE), (8, 8), ALL_AUS)
    torch.testing.assert_close(au_attention_maps(turned, (SIZE, SIZE), (8, 8), ALL_AUS),
                               torch.rot90(maps, k=1, dims=(-2, -1)), atol=1e-5, rtol=0)


def test_flip_invariance_and_side_swap():
    lm = faces()
    flipped = mirror(lm, SIZE)
    maps = au_attention_maps(lm, (SIZE, SIZE), (7, 8), ALL_AUS)
    torch.testing.assert_close(au_attention_maps(flipped, (SIZE, SIZE), (7, 8), ALL_AUS),
                               maps.flip(-1), atol=1e-5, rtol=0)
    sides = au_attention_maps(lm, (SIZE, SIZE), (7, 8), ALL_AUS, per_side=True)
    sides_flipped = au_attention_maps(flipped, (SIZE, SIZE), (7, 8), ALL_AUS, per_side=True)
    bi = [ALL_AUS.index(n) for n in BILATERAL]
    ce = [ALL_AUS.index(n) for n in CENTRAL]
    torch.testing.assert_close(sides_flipped[:, bi], sides[:, bi].flip(2, -1), atol=1e-5, rtol=0)
    torch.testing.assert_close(sides_flipped[:, ce], sides[:, ce].flip(-1), atol=1e-5, rtol=0)


def test_degenerate_faces_give_finite_maps():
    maps = au_attention_maps(torch.zeros(2, 68, 2), (SIZE, SIZE), (4, 4), "disfa")
    assert torch.isfinite(maps).all()


@pytest.mark.parametrize("bad", [torch.zeros(68, 2), torch.zeros(1, 5, 2), np.zeros((1, 68, 2))])
def test_bad_landmarks_are_a_clear_error(bad):
    with pytest.raises(ValueError, match=r"\[B, 68, 2\]"):
        au_attention_maps(bad, (SIZE, SIZE), (4, 4), "disfa")


def test_bad_arguments_are_clear_errors():
    lm = faces(1)
    with pytest.raises(ValueError, match="grid"):
        au_attention_maps(lm, (SIZE, SIZE), (0, 4), "disfa")
    with pytest.raises(ValueError, match="sigma"):
        au_attention_maps(lm, (SIZE, SIZE), (4, 4), "disfa", sigma=0)
    with pytest.raises(ValueError, match="unknown Action Unit"):
        au_centres(lm, [3])
