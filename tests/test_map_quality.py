import math

import numpy as np
import pytest
import torch
from torch import nn

from aukit.au import DATASET_AUS
from aukit.au_maps import au_attention_maps, canonical_landmarks
from aukit.data.synthau import SynthAU
from aukit.data.transforms import hflip_face
from aukit.map_quality import (
    REGION_RADIUS,
    MapQuality,
    au_regions,
    evaluate_maps,
    face_scores,
    map_quality,
)
from aukit.models.hiva import HiVA

SIZE = 128
GRID = (8, 8)
AUS = DATASET_AUS["synthau"]


def canonical(batch: int = 1) -> torch.Tensor:
    """The canonical aligned face at SIZE px: [B, 68, 2]."""
    return torch.from_numpy(canonical_landmarks(SIZE))[None].repeat(batch, 1, 1)


def synthau(count: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    """Rendered SynthAU faces at SIZE px (pose nuisances included): uint8 images
    [B, 3, S, S] and landmarks [B, 68, 2]."""
    dataset = SynthAU(seed=0, image_size=SIZE)
    samples = [dataset.sample(3, i) for i in range(count)]
    images = torch.from_numpy(np.stack([s["image"] for s in samples])).permute(0, 3, 1, 2)
    landmarks = torch.from_numpy(np.stack([s["landmarks"] for s in samples]))
    return images.contiguous(), landmarks


def normalised(maps: torch.Tensor) -> torch.Tensor:
    return maps / maps.sum((-2, -1), keepdim=True)


def test_regions_shape_and_typical_area():
    regions = au_regions(canonical(2), (SIZE, SIZE), GRID, AUS)
    assert regions.shape == (2, len(AUS), *GRID) and regions.dtype == torch.bool
    area = regions.float().mean((-2, -1))
    # the documented coverage of the default radius: ~22 % for the canonical face
    assert 0.15 < area.mean() < 0.3 and (area > 0).all()
    _, landmarks = synthau()
    area = au_regions(landmarks, (SIZE, SIZE), GRID, AUS).float().mean((-2, -1))
    assert 0.05 < area.mean() < 0.2 and (area > 0).all()
    # a larger radius only adds cells; radius 0 still keeps each centre's nearest cell(s)
    small = au_regions(landmarks, (SIZE, SIZE), GRID, AUS, radius=0.0)
    big = au_regions(landmarks, (SIZE, SIZE), GRID, AUS, radius=2 * REGION_RADIUS)
    base = au_regions(landmarks, (SIZE, SIZE), GRID, AUS)
    assert small.any((-2, -1)).all()
    assert (small <= base).all() and (base <= big).all() and (big.sum() > base.sum() > small.sum())


def test_regions_sit_on_the_au():
    regions = au_regions(canonical(), (SIZE, SIZE), GRID, [1, 17])[0]
    rows = torch.arange(GRID[0])
    brow_rows = rows[regions[0].any(-1)]
    chin_rows = rows[regions[1].any(-1)]
    assert brow_rows.max() <= 3 and chin_rows.min() >= 5  # brows at the top, chin at the bottom
    assert not (regions[0] & regions[1]).any()


def test_regions_follow_the_landmarks():
    landmarks = canonical()
    regions = au_regions(landmarks, (SIZE, SIZE), GRID, AUS)
    cell = SIZE // GRID[0]
    # one cell right and one cell up: the regions move by one cell (compared where both exist)
    moved = au_regions(landmarks + torch.tensor([cell, -cell]), (SIZE, SIZE), GRID, AUS)
    assert torch.equal(moved[..., :-1, 1:], regions[..., 1:, :-1])
    assert not torch.equal(moved, regions)
    # regions scale with the face: twice the image and the landmarks, the same grid cells
    assert torch.equal(au_regions(2 * landmarks, (2 * SIZE, 2 * SIZE), GRID, AUS), regions)


def test_regions_mirror_with_a_horizontal_flip():
    images, landmarks = synthau()
    regions = au_regions(landmarks, (SIZE, SIZE), GRID, AUS)
    _, flipped = hflip_face(images, landmarks)
    # the flip permutes landmarks, so bilateral AUs swap sides and the union is mirrored
    assert torch.equal(au_regions(flipped, (SIZE, SIZE), GRID, AUS), regions.flip(-1))
    # the canonical face is symmetric, so its regions are too (central AUs straddle the midline)
    sym = au_regions(canonical(), (SIZE, SIZE), GRID, AUS)
    assert torch.equal(sym, sym.flip(-1))


def test_map_equal_to_its_region_scores_best():
    _, landmarks = synthau()
    regions = au_regions(landmarks, (SIZE, SIZE), GRID, AUS)
    q = map_quality(normalised(regions.float()), regions)
    assert q["mass_in_region"].shape == (len(AUS),)
    torch.testing.assert_close(q["mass_in_region"], torch.ones(len(AUS), dtype=torch.float64))
    area = regions.float().mean((-2, -1)).double().mean(0)
    torch.testing.assert_close(q["uniform_mass"], area)
    torch.testing.assert_close(q["mass_ratio"], 1 / area)
    assert (q["mass_ratio"] > 2).all() and q["mass_ratio_mean"] > 2
    assert (q["pointing"] == 1).all() and q["pointing_mean"] == 1
    torch.testing.assert_close(q["map_distinctness"], q["region_distinctness"])
    assert q["map_distinctness"] > 0.3


def test_uniform_map_scores_chance():
    _, landmarks = synthau()
    regions = au_regions(landmarks, (SIZE, SIZE), GRID, AUS)
    q = map_quality(torch.ones(regions.shape), regions)
    torch.testing.assert_close(q["mass_ratio"], torch.ones(len(AUS), dtype=torch.float64))
    # every cell ties for the peak, so pointing is the region's area: chance, not an accident
    torch.testing.assert_close(q["pointing"], q["uniform_mass"])
    assert q["map_distinctness"] == 0


def test_map_peaked_on_another_au_misses():
    landmarks = canonical(2)
    regions = au_regions(landmarks, (SIZE, SIZE), GRID, [1, 17])  # brows vs chin: disjoint
    maps = torch.full(regions.shape, 0.01)
    maps[:, 0] += 5 * regions[:, 1]  # AU1's map looks at the chin
    maps[:, 1] += 5 * regions[:, 0]  # AU17's map looks at the brows
    q = map_quality(maps, regions)
    assert (q["pointing"] == 0).all()
    assert (q["mass_ratio"] < 0.5).all()
    assert q["map_distinctness"] > 0.5


def test_distinctness_detects_identical_maps():
    _, landmarks = synthau()
    regions = au_regions(landmarks, (SIZE, SIZE), GRID, AUS)
    shared = torch.rand(len(landmarks), 1, *GRID)
    same = map_quality(shared.expand(-1, len(AUS), -1, -1), regions)
    assert same["map_distinctness"] == pytest.approx(0.0, abs=1e-6)
    different = map_quality(torch.rand(regions.shape), regions)
    assert 0 < different["map_distinctness"] <= 1
    # a single AU has no pair to compare
    assert math.isnan(map_quality(shared, regions[:, :1])["map_distinctness"])


def test_accumulator_matches_one_big_batch():
    _, landmarks = synthau(6)
    maps = torch.rand(6, len(AUS), *GRID) ** 4
    quality = MapQuality(AUS)
    quality.update(maps[:4], landmarks[:4], (SIZE, SIZE))
    quality.update(maps[4:], landmarks[4:], (SIZE, SIZE))
    assert quality.count == 6
    out = quality.compute()
    whole = map_quality(maps, au_regions(landmarks, (SIZE, SIZE), GRID, AUS))
    for name in ("mass_in_region", "uniform_mass", "mass_ratio", "pointing"):
        for a, number in enumerate(AUS):
            assert out[f"{name}_AU{number}"] == pytest.approx(float(whole[name][a]))
        assert out[f"{name}_mean"] == pytest.approx(float(whole[f"{name}_mean"]))
    assert out["map_distinctness"] == pytest.approx(float(whole["map_distinctness"]))
    assert all(isinstance(v, float) for v in out.values())
    assert len(out) == 4 * (len(AUS) + 1) + 2
    quality.reset()
    with pytest.raises(ValueError, match="before any update"):
        quality.compute()


class LandmarkMaps(nn.Module):
    """A stand-in model whose activation maps are the landmark Gaussians (or flat maps)."""

    aus = (1, 2, 12, 17)

    def __init__(self, flat: bool = False) -> None:
        super().__init__()
        self.flat = flat
        self.calls = 0

    def forward(self, images: torch.Tensor, landmarks: torch.Tensor) -> dict:
        assert images.dtype == torch.float32 and not self.training  # normalised, eval mode
        self.calls += 1
        maps = au_attention_maps(landmarks, images.shape[-2:], GRID, self.aus)
        if self.flat:
            maps = torch.ones_like(maps)
        return {"act_maps": normalised(maps)}


def loader(batches: int = 3, batch_size: int = 2) -> list[dict]:
    images, landmarks = synthau(batches * batch_size)
    return [{"image": images[i:i + batch_size], "landmarks": landmarks[i:i + batch_size]}
            for i in range(0, len(images), batch_size)]


def test_evaluate_maps_with_landmark_maps():
    model = LandmarkMaps().train()
    out = evaluate_maps(model, loader(), max_batches=2)
    assert model.calls == 2 and model.training  # stopped early, mode restored
    # a landmark Gaussian peaks at the cell nearest its centre, which the region always holds
    assert out["pointing_mean"] == 1.0
    assert out["mass_ratio_mean"] > 2
    assert set(out) >= {"mass_ratio_AU12", "pointing_AU12", "mass_ratio_mean", "pointing_mean",
                        "map_distinctness", "region_distinctness"}
    flat = evaluate_maps(LandmarkMaps(flat=True), loader(1))
    assert flat["mass_ratio_mean"] == pytest.approx(1.0)
    assert flat["map_distinctness"] == pytest.approx(0.0)


def test_evaluate_maps_with_hiva():
    data = loader(1)
    # without DDCA, HiVA's activation maps are its landmark prior: a perfect score
    prior = HiVA(AUS, {"image_size": SIZE}, use_text=False, use_ddca=False)
    assert evaluate_maps(prior, data)["pointing_mean"] == 1.0
    model = HiVA(AUS, {"image_size": SIZE}, use_text=False)
    out = evaluate_maps(model, data)
    assert all(math.isfinite(v) for v in out.values())
    assert 0 <= out["pointing_mean"] <= 1 and 0 <= out["map_distinctness"] <= 1


def test_bad_inputs_raise_clear_errors():
    landmarks = canonical(2)
    regions = au_regions(landmarks, (SIZE, SIZE), GRID, AUS)
    maps = normalised(torch.rand(regions.shape))
    with pytest.raises(ValueError, match=r"\[B, A, h, w\]"):
        map_quality(maps[0], regions)
    with pytest.raises(ValueError, match="bool tensor of the maps' shape"):
        map_quality(maps, regions[:, :3])
    with pytest.raises(ValueError, match="bool tensor"):
        map_quality(maps, regions.float())
    with pytest.raises(ValueError, match="non-negative"):
        face_scores(maps - 0.5, regions)
    with pytest.raises(ValueError, match="positive total mass"):
        face_scores(torch.zeros_like(maps), regions)
    with pytest.raises(ValueError, match="landmarks must be"):
        au_regions(landmarks[:, :10], (SIZE, SIZE), GRID, AUS)
    with pytest.raises(ValueError, match="image_size"):
        au_regions(landmarks, (SIZE,), GRID, AUS)
    with pytest.raises(ValueError, match="grid"):
        au_regions(landmarks, (SIZE, SIZE), (0, 8), AUS)
    with pytest.raises(ValueError, match="radius"):
        au_regions(landmarks, (SIZE, SIZE), GRID, AUS, radius=-1.0)
    with pytest.raises(ValueError, match="unknown Action Unit"):
        MapQuality(["AU99"])
    quality = MapQuality(AUS)
    with pytest.raises(ValueError, match="built for 12 AUs"):
        quality.update(maps[:, :3], landmarks, (SIZE, SIZE))
    with pytest.raises(ValueError, match="cover 2 faces"):
        quality.update(maps, landmarks[:1], (SIZE, SIZE))
    with pytest.raises(ValueError, match="AU list"):
        evaluate_maps(lambda images, lms: {}, loader(1))
    with pytest.raises(ValueError, match="no 'act_maps'"):
        evaluate_maps(lambda images, lms: {"logits": images}, loader(1), aus=AUS)
    with pytest.raises(ValueError, match="max_batches"):
        evaluate_maps(LandmarkMaps(), loader(1), max_batches=0)
