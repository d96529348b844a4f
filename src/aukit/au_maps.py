"""Face geometry: the aligned-face template (68 landmarks) and AU attention maps from landmarks.

Coordinates are continuous pixel coordinates ``(x, y)``: pixel ``(row i, column j)`` covers
``[j, j + 1) x [i, i + 1)``, so its centre is ``(j + 0.5, i + 0.5)`` and a horizontal flip is
``x' = W - x``. This is the convention albumentations' resize and crop keypoints follow.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import numpy as np
import torch
from torch import Tensor

from aukit.au import ACTION_UNITS, NUM_LANDMARKS, au_numbers

# The dlib / iBUG-68 mean face shape of OpenFace (cmusatyalab/openface, openface/align_dlib.py,
# TEMPLATE, Apache-2.0), min-max normalised like its MINMAX_TEMPLATE, scaled by 0.72, shifted so
# the eye midpoint is at x = 0.5 and the brows start at y = 0.255, then averaged with its own
# mirror image (the population mean face is symmetric; the residual asymmetry of the published
# shape is at most 2 % of the crop). Eyes sit at y = 0.372, the mouth at y = 0.733, the chin at
# y = 0.975; the inter-ocular distance is 0.309 of the crop width.
CANONICAL_LANDMARKS: np.ndarray = np.array([
    (0.1400, 0.3766), (0.1417, 0.4738), (0.1512, 0.5719), (0.1701, 0.6684),
    (0.2069, 0.7583), (0.2640, 0.8372), (0.3335, 0.9044), (0.4116, 0.9592),
    (0.5000, 0.9750), (0.5884, 0.9592), (0.6665, 0.9044), (0.7360, 0.8372),
    (0.7931, 0.7583), (0.8299, 0.6684), (0.8488, 0.5719), (0.8583, 0.4738),
    (0.8600, 0.3766), (0.2147, 0.3041), (0.2597, 0.2683), (0.3199, 0.2591),
    (0.3819, 0.2693), (0.4406, 0.2946), (0.5594, 0.2946), (0.6181, 0.2693),
    (0.6801, 0.2591), (0.7403, 0.2683), (0.7853, 0.3041), (0.5000, 0.3667),
    (0.5000, 0.4303), (0.5000, 0.4939), (0.5000, 0.5589), (0.4300, 0.5996),
    (0.4635, 0.6135), (0.5000, 0.6254), (0.5365, 0.6135), (0.5700, 0.5996),
    (0.2859, 0.3729), (0.3235, 0.3503), (0.3695, 0.3512), (0.4081, 0.3813),
    (0.3658, 0.3898), (0.3210, 0.3893), (0.5919, 0.3813), (0.6305, 0.3512),
    (0.6765, 0.3503), (0.7141, 0.3729), (0.6790, 0.3893), (0.6342, 0.3898),
    (0.3602, 0.7144), (0.4110, 0.6935), (0.4628, 0.6843), (0.5000, 0.6933),
    (0.5372, 0.6843), (0.5890, 0.6935), (0.6398, 0.7144), (0.5911, 0.7675),
    (0.5404, 0.7911), (0.5000, 0.7954), (0.4596, 0.7911), (0.4089, 0.7675),
    (0.3820, 0.7179), (0.4624, 0.7155), (0.5000, 0.7194), (0.5376, 0.7155),
    (0.6180, 0.7179), (0.5383, 0.7428), (0.5000, 0.7476), (0.4617, 0.7428),
], dtype=np.float32)
CANONICAL_LANDMARKS.flags.writeable = False

_RIGHT_EYE = slice(36, 42)
_LEFT_EYE = slice(42, 48)


def _size_hw(size: int | Sequence[int], what: str) -> tuple[int, int]:
    hw = (size, size) if isinstance(size, int) else tuple(size)
    if len(hw) != 2 or any(not isinstance(s, int) or s <= 0 for s in hw):
        raise ValueError(f"{what} must be a positive int or a pair of positive ints (H, W), "
                         f"got {size!r}")
    return hw


def canonical_landmarks(image_size: int | tuple[int, int]) -> np.ndarray:
    """The canonical face in pixel coordinates of an aligned crop of ``image_size`` (S or (H, W)).

    Returns float32 ``[68, 2]`` (x, y); use it for images without their own landmarks.
    """
    h, w = _size_hw(image_size, "image_size")
    return CANONICAL_LANDMARKS * np.array([w, h], dtype=np.float32)


def _check_landmarks(landmarks: Tensor) -> Tensor:
    if not isinstance(landmarks, Tensor) or landmarks.ndim != 3 or landmarks.shape[1:] != (
            NUM_LANDMARKS, 2):
        shape = tuple(landmarks.shape) if isinstance(landmarks, Tensor) else type(landmarks)
        raise ValueError(f"landmarks must be a tensor [B, {NUM_LANDMARKS}, 2] of (x, y) pixel "
                         f"coordinates, got {shape}; add a batch dimension with "
                         "landmarks[None] for a single face")
    return landmarks.float()


def _eye_axis(landmarks: Tensor) -> Tensor:
    """``[B, 68, 2]`` -> the right-to-left eye-centre vector ``[B, 2]`` (length = IOD)."""
    return landmarks[:, _LEFT_EYE].mean(1) - landmarks[:, _RIGHT_EYE].mean(1)


def inter_ocular_distance(landmarks: Tensor) -> Tensor:
    """Distance between the eye centres (means of 36-41 and 42-47): ``[B, 68, 2]`` -> ``[B]``."""
    return _eye_axis(_check_landmarks(landmarks)).norm(dim=-1)


@lru_cache(maxsize=32)
def _centre_tables(aus: tuple[int, ...]) -> tuple[Tensor, Tensor, Tensor]:
    """Landmark weights ``[A, 2, 68]``, IOD offsets ``[A, 2, 2]`` and slot validity ``[A, 2]``."""
    weights = torch.zeros(len(aus), 2, NUM_LANDMARKS)
    offsets = torch.zeros(len(aus), 2, 2)
    valid = torch.zeros(len(aus), 2, dtype=torch.bool)
    for a, number in enumerate(aus):
        for side, centre in enumerate(ACTION_UNITS[number].centres):
            weights[a, side, list(centre.landmarks)] = 1.0 / len(centre.landmarks)
            offsets[a, side] = torch.tensor(centre.offset)
            valid[a, side] = True
    return weights, offsets, valid


def au_centres(landmarks: Tensor, aus: Sequence[int | str]) -> tuple[Tensor, Tensor]:
    """Landmark-derived AU centres in pixel coordinates.

    Args:
        landmarks: ``[B, 68, 2]`` (x, y).
        aus: AU numbers or names (``[1, 2, "AU12"]``, order kept) or a dataset name.

    Returns:
        centres ``[B, A, 2, 2]``: slot 0 the subject's right (or the only centre of a central AU),
        slot 1 the subject's left; valid ``[A, 2]`` bool, False for slot 1 of central AUs (whose
        centre is then zero).
    """
    landmarks = _check_landmarks(landmarks)
    weights, offsets, valid = (t.to(landmarks.device) for t in _centre_tables(au_numbers(aus)))
    x_axis = _eye_axis(landmarks)  # [B, 2]
    # the face's "down" is the eye axis turned +90 degrees in image coordinates (y points down),
    # so offsets follow in-plane rotation and scale with the IOD
    y_axis = torch.stack([-x_axis[:, 1], x_axis[:, 0]], dim=-1)
    centres = torch.einsum("asl,bld->basd", weights, landmarks)
    centres = (centres + offsets[None, ..., :1] * x_axis[:, None, None]
               + offsets[None, ..., 1:] * y_axis[:, None, None])
    return centres * valid[None, ..., None], valid


def au_attention_maps(landmarks: Tensor, image_size: tuple[int, int], grid: tuple[int, int],
                      aus: Sequence[int | str], sigma: float = 0.3,
                      per_side: bool = False) -> Tensor:
    """Gaussian AU attention maps over an ``h x w`` feature grid.

    Each centre gets a Gaussian of std ``sigma * IOD`` evaluated at the grid-cell centres mapped
    into the image; a bilateral AU's map is the max over its two peaks (1 at a peak).

    Args:
        landmarks: ``[B, 68, 2]`` pixel coordinates in an image of ``image_size`` (H, W).
        image_size: (H, W) of the image the landmarks refer to.
        grid: (h, w) of the output maps (e.g. the backbone's token grid).
        aus: AU numbers or names; A of them.
        sigma: Gaussian std in inter-ocular distances.
        per_side: keep the two sides apart.

    Returns:
        float32 ``[B, A, h, w]`` in [0, 1], or ``[B, A, 2, h, w]`` with ``per_side`` (slot 1 is
        zero for central AUs), on the device of ``landmarks``.
    """
    img_h, img_w = _size_hw(image_size, "image_size")
    grid_h, grid_w = _size_hw(grid, "grid")
    if not sigma > 0:
        raise ValueError(f"sigma must be > 0 (a Gaussian width in IODs), got {sigma}")
    centres, valid = au_centres(landmarks, aus)  # [B, A, 2, 2], [A, 2]
    device = centres.device
    xs = (torch.arange(grid_w, device=device) + 0.5) * (img_w / grid_w)
    ys = (torch.arange(grid_h, device=device) + 0.5) * (img_h / grid_h)
    # a degenerate face (all landmarks equal, e.g. "missing" zeros) gives peaked maps, not NaNs
    std = (sigma * inter_ocular_distance(landmarks)).clamp_min(1e-3)  # [B]
    inv_var = 1.0 / (2 * std**2)[:, None, None, None]
    # the isotropic Gaussian is separable: h + w exponentials per centre instead of h * w
    gx = torch.exp(-((xs - centres[..., :1]) ** 2) * inv_var)  # [B, A, 2, w]
    gy = torch.exp(-((ys - centres[..., 1:]) ** 2) * inv_var)  # [B, A, 2, h]
    gy = gy * valid[None, :, :, None]
    maps = gy[..., :, None] * gx[..., None, :]  # [B, A, 2, h, w]
    return maps if per_side else maps.amax(dim=2)
