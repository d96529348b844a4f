"""Do per-AU activation maps point at their AU? Region mass, pointing game and distinctness.

An AU's *region* is the set of grid cells whose centre lies within ``radius`` inter-ocular
distances (IOD) of one of the AU's landmark-defined centres (``aukit.au_maps.au_centres``:
one centre for a central AU, two for a bilateral one). A map ``[h, w]`` (e.g. HiVA's DDCA
``act_maps``, each summing to 1) is then scored per face and AU by

- the mass it puts inside the region, against the region's area fraction: the mass a uniform
  map would put there. Their ratio is 1 for an uninformative map and ``1 / area`` at best;
- the pointing game: whether its peak cell lies inside the region (chance = the area fraction);
- how different the maps of different AUs of the same face are (mean pairwise total-variation
  distance), which is 0 when every AU gets the same map, whatever that map looks like.

AUs whose centres nearly coincide (12, 14, 15 and 20 all sit at the lip corner) get nearly the
same region, so these scores tell face parts apart, not those AUs.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from aukit.au import au_numbers
from aukit.au_maps import au_centres, inter_ocular_distance
from aukit.data.transforms import normalize_images

# In IODs. 2.33 std of HiVA's default landmark prior (sigma 0.3 IOD), so a region holds 93 % of a
# centre's prior mass. On an 8 x 8 grid at 128 px it covers ~22 % of the grid for the canonical
# aligned face (IOD = 0.31 of the crop) and ~11 % for SynthAU faces (IOD ~ 0.22 of the crop).
REGION_RADIUS = 0.7

# rounding slack (pixels) so a centre exactly between cells gets both, as its mirror image does
_DISTANCE_TOLERANCE = 1e-3
# relative slack for equal peak values (a flat map has every cell as its peak)
_PEAK_TOLERANCE = 1e-5

_PER_AU = ("mass_in_region", "uniform_mass", "mass_ratio", "pointing")
_PER_FACE = ("map_distinctness", "region_distinctness")


def _pair(size: Sequence[int], what: str) -> tuple[int, int]:
    hw = tuple(int(s) for s in size)
    if len(hw) != 2 or min(hw) <= 0:
        raise ValueError(f"{what} must be a pair of positive ints (H, W), got {tuple(size)}")
    return hw


def au_regions(landmarks: Tensor, image_size: Sequence[int], grid: Sequence[int],
               aus: Sequence[int | str] | str, radius: float = REGION_RADIUS) -> Tensor:
    """Where each AU acts, as grid cells: bool ``[B, A, h, w]`` on the device of ``landmarks``.

    A cell belongs to an AU's region when its centre (cell ``(i, j)`` of an ``h x w`` grid over
    an ``H x W`` image is centred at ``((j + 0.5) W / w, (i + 0.5) H / h)``) lies within
    ``radius * IOD`` of one of the AU's centres. Each centre reaches at least its nearest cell
    centre(s), so no region is empty on a coarse grid, for a tiny face or a centre off the image.

    Args:
        landmarks: ``[B, 68, 2]`` (x, y) pixel coordinates in the image.
        image_size: (H, W) of the image the landmarks refer to.
        grid: (h, w) of the maps, e.g. the backbone's token grid.
        aus: AU numbers or names (A of them, order kept) or a dataset name.
        radius: region radius in inter-ocular distances (>= 0; 0 keeps the nearest cells only).
    """
    img_h, img_w = _pair(image_size, "image_size")
    grid_h, grid_w = _pair(grid, "grid")
    if not radius >= 0:
        raise ValueError(f"radius must be >= 0 (in inter-ocular distances), got {radius}")
    centres, valid = au_centres(landmarks, aus)  # [B, A, 2, 2], [A, 2]
    device = centres.device
    xs = (torch.arange(grid_w, device=device) + 0.5) * (img_w / grid_w)
    ys = (torch.arange(grid_h, device=device) + 0.5) * (img_h / grid_h)
    dx2 = (xs - centres[..., :1]) ** 2  # [B, A, 2, w]
    dy2 = (ys - centres[..., 1:]) ** 2  # [B, A, 2, h]
    dist = (dy2[..., :, None] + dx2[..., None, :]).sqrt()  # [B, A, 2, h, w]
    reach = radius * inter_ocular_distance(landmarks)[:, None, None]  # [B, 1, 1]
    reach = torch.maximum(reach, dist.flatten(-2).amin(-1)) + _DISTANCE_TOLERANCE  # [B, A, 2]
    inside = (dist <= reach[..., None, None]) & valid[None, :, :, None, None]
    return inside.any(dim=2)


def _distinctness(probs: Tensor) -> Tensor:
    """Mean total-variation distance between different AUs' maps: ``[B, A, N]`` -> ``[B]``."""
    a = probs.shape[1]
    if a < 2:
        return probs.new_full(probs.shape[:1], math.nan)
    tv = 0.5 * torch.cdist(probs, probs, p=1)  # [B, A, A], zero diagonal
    return tv.sum((-2, -1)) / (a * (a - 1))


def face_scores(maps: Tensor, regions: Tensor) -> dict[str, Tensor]:
    """Per-face scores of maps against regions.

    Args:
        maps: ``[B, A, h, w]`` non-negative; each map is divided by its sum (attention maps
            already sum to 1).
        regions: bool ``[B, A, h, w]``, e.g. from ``au_regions``.

    Returns:
        float32 ``[B, A]`` "mass_in_region" (map mass inside the region), "uniform_mass" (the
        region's area fraction) and "pointing" (1 if the peak cell is inside; cells tying for
        the peak share the hit, so a flat map scores the area fraction); ``[B]``
        "map_distinctness" (mean pairwise total-variation distance between the AUs' maps, in
        [0, 1]; NaN for a single AU) and "region_distinctness" (the same for the normalised
        regions: what maps equal to the regions would reach).
    """
    if not isinstance(maps, Tensor) or maps.ndim != 4 or not maps.is_floating_point():
        got = tuple(maps.shape) if isinstance(maps, Tensor) else type(maps).__name__
        raise ValueError(f"maps must be a float tensor [B, A, h, w], got {got}")
    if not isinstance(regions, Tensor) or regions.dtype != torch.bool \
            or regions.shape != maps.shape:
        got = (tuple(regions.shape), regions.dtype) if isinstance(regions, Tensor) \
            else type(regions).__name__
        raise ValueError(f"regions must be a bool tensor of the maps' shape "
                         f"{tuple(maps.shape)} [B, A, h, w], got {got}")
    probs = maps.detach().float().flatten(2)  # [B, A, N]
    if (probs < 0).any():
        raise ValueError("maps must be non-negative (attention weights or a normalised "
                         "saliency); got negative values")
    total = probs.sum(-1, keepdim=True)
    if not (total > 0).all():
        raise ValueError("every map needs a positive total mass; got an all-zero (or NaN) map")
    probs = probs / total
    inside = regions.flatten(2)  # [B, A, N]
    peak = probs >= probs.amax(-1, keepdim=True) * (1 - _PEAK_TOLERANCE)
    region_probs = inside.float() / inside.sum(-1, keepdim=True).clamp_min(1)
    return {
        "mass_in_region": (probs * inside).sum(-1),
        "uniform_mass": inside.float().mean(-1),
        "pointing": (peak & inside).sum(-1) / peak.sum(-1),
        "map_distinctness": _distinctness(probs),
        "region_distinctness": _distinctness(region_probs),
    }


def _summarise(sums: dict[str, Tensor], count: int) -> dict[str, Tensor]:
    """Sums of ``face_scores`` over ``count`` faces -> per-AU ``[A]`` means and scalar means."""
    out = {name: sums[name] / count for name in (*_PER_AU, *_PER_FACE) if name != "mass_ratio"}
    # a ratio of means, not a mean of ratios: faces with tiny regions would dominate the latter
    out["mass_ratio"] = out["mass_in_region"] / out["uniform_mass"]
    for name in _PER_AU:
        out[f"{name}_mean"] = out[name].mean()
    return out


def map_quality(maps: Tensor, regions: Tensor) -> dict[str, Tensor]:
    """How well maps ``[B, A, h, w]`` point at their regions (bool ``[B, A, h, w]``).

    Returns ``[A]`` tensors "mass_in_region", "uniform_mass", "mass_ratio" (mass over
    uniform mass: 1 = no better than a uniform map) and "pointing" (hit rate; chance is
    "uniform_mass"), all averaged over faces; their means over AUs as scalars "<name>_mean";
    and scalars "map_distinctness" and "region_distinctness" (see ``face_scores``).
    """
    scores = face_scores(maps, regions)
    return _summarise({k: v.double().sum(0) for k, v in scores.items()}, len(maps))


class MapQuality:
    """``map_quality`` accumulated over batches, with regions from each batch's landmarks.

    State: per-AU and per-face score sums and the number of faces seen; ``reset`` clears them.
    """

    def __init__(self, aus: Sequence[int | str] | str, radius: float = REGION_RADIUS) -> None:
        self.aus = au_numbers(aus)
        if not radius >= 0:
            raise ValueError(f"radius must be >= 0 (in inter-ocular distances), got {radius}")
        self.radius = radius
        self.reset()

    def reset(self) -> None:
        self._sums: dict[str, Tensor] = {}
        self._count = 0

    @property
    def count(self) -> int:
        """Faces accumulated so far."""
        return self._count

    def update(self, maps: Tensor, landmarks: Tensor, image_size: Sequence[int]) -> None:
        """Add maps ``[B, A, h, w]`` of faces with landmarks ``[B, 68, 2]`` (pixels of an image
        of ``image_size`` (H, W)); A must match the AU list."""
        if not isinstance(maps, Tensor) or maps.ndim != 4:
            got = tuple(maps.shape) if isinstance(maps, Tensor) else type(maps).__name__
            raise ValueError(f"maps must be a tensor [B, A, h, w], got {got}")
        if maps.shape[1] != len(self.aus):
            raise ValueError(f"maps have {maps.shape[1]} AU maps but MapQuality was built for "
                             f"{len(self.aus)} AUs {list(self.aus)}")
        regions = au_regions(landmarks, image_size, maps.shape[-2:], self.aus,
                             self.radius)  # [B, A, h, w]
        if len(regions) != len(maps):
            raise ValueError(f"maps cover {len(maps)} faces but landmarks "
                             f"{tuple(landmarks.shape)} cover {len(landmarks)}")
        regions = regions.to(maps.device)
        for name, value in face_scores(maps, regions).items():
            total = value.double().sum(0).cpu()
            self._sums[name] = self._sums[name] + total if name in self._sums else total
        self._count += len(maps)

    def compute(self) -> dict[str, float]:
        """``{"mass_in_region_AU12": ..., "uniform_mass_AU12": ..., "mass_ratio_AU12": ...,
        "pointing_AU12": ..., "<name>_mean": ..., "map_distinctness": ...,
        "region_distinctness": ...}`` over all faces seen (names as in ``map_quality``)."""
        if self._count == 0:
            raise ValueError("MapQuality.compute() before any update: no faces to score")
        summary = _summarise(self._sums, self._count)
        out: dict[str, float] = {}
        for name in _PER_AU:
            out.update({f"{name}_AU{n}": float(v) for n, v in zip(self.aus, summary[name],
                                                                   strict=True)})
            out[f"{name}_mean"] = float(summary[f"{name}_mean"])
        out.update({name: float(summary[name]) for name in _PER_FACE})
        return out


def _model_aus(model: Any) -> tuple[int, ...] | None:
    # HiVA has .aus; a finetune module wraps it as .model
    for owner in (model, getattr(model, "model", None)):
        if getattr(owner, "aus", None) is not None:
            return tuple(owner.aus)
    return None


def evaluate_maps(model: Callable[[Tensor, Tensor], dict[str, Tensor]], loader: Iterable[dict],
                  aus: Sequence[int | str] | str | None = None, device: str | torch.device = "cpu",
                  max_batches: int | None = None,
                  radius: float = REGION_RADIUS) -> dict[str, float]:
    """Score a model's activation maps over a loader; returns ``MapQuality.compute()``.

    Args:
        model: ``model(images [B, 3, H, W], landmarks [B, 68, 2]) -> {"act_maps": [B, A, h, w],
            ...}``, e.g. a finetune module, or a HiVA wrapped with its text inputs. An
            ``nn.Module`` is moved to ``device`` and run in eval mode (its mode is restored).
        loader: batches with "image" ``[B, 3, H, W]`` (uint8 images are ImageNet-normalised
            first) and "landmarks" ``[B, 68, 2]`` in the image's pixels.
        aus: the maps' AUs, in order; default ``model.aus`` (HiVA) or ``model.model.aus``.
        device: where the model runs.
        max_batches: stop after this many batches (None = the whole loader).
        radius: region radius in inter-ocular distances.
    """
    if aus is None:
        aus = _model_aus(model)
        if aus is None:
            raise ValueError("evaluate_maps needs the maps' AU list: pass aus=[...] (the model "
                             "has no .aus nor .model.aus)")
    if max_batches is not None and max_batches < 1:
        raise ValueError(f"max_batches must be >= 1 or None, got {max_batches}")
    quality = MapQuality(aus, radius)
    was_training = model.training if isinstance(model, nn.Module) else None
    if isinstance(model, nn.Module):
        model.to(device).eval()
    try:
        with torch.inference_mode():
            for i, batch in enumerate(loader):
                if max_batches is not None and i >= max_batches:
                    break
                images = normalize_images(batch["image"].to(device))
                if images.ndim != 4:
                    raise ValueError(f"expected images [B, 3, H, W], got {tuple(images.shape)} "
                                     "(multi-view batches are for pretraining)")
                landmarks = batch["landmarks"].to(device).float()
                out = model(images, landmarks)
                if "act_maps" not in out:
                    raise ValueError("the model's output has no 'act_maps' (the linear baseline "
                                     "has no activation maps)")
                quality.update(out["act_maps"], landmarks, images.shape[-2:])
    finally:
        if was_training is not None:
            model.train(was_training)
    return quality.compute()
