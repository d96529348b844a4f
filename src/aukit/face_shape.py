"""The face frame: landmarks with the camera and the crop taken out, and mirror images.

Shapes are ``[B, 68, 2]`` iBUG-68 points; the face frame has its origin between the eye centres,
the eye line along +x and the inter-ocular distance 1, fitted by an affine map on the points
that AUs barely move, so whatever the crop, scale, shear or in-plane rotation, what is left is
the face's own shape: who the person is and the expression.
"""

from __future__ import annotations

from functools import cache

import torch
from torch import Tensor

from aukit.au import FLIP_PERMUTATION
from aukit.au_maps import CANONICAL_LANDMARKS

# landmarks that AUs barely move (eye corners, nose bridge and tip, nostril wings): the affine
# fit onto the template uses them only, so it undoes the camera and the crop, not the expression
STABLE = (36, 39, 42, 45, 27, 28, 29, 30, 31, 33, 35)


@cache
def canonical_shape() -> Tensor:
    """The canonical face ``[68, 2]``, mirror-symmetric, origin between the eye centres,
    inter-ocular distance 1. Built once (every forward of the geometry branch reads it); do
    not modify it in place."""
    face = torch.tensor(CANONICAL_LANDMARKS, dtype=torch.float64)
    right, left = face[36:42].mean(0), face[42:48].mean(0)
    face = (face - (right + left) / 2) / (left - right).norm()
    return ((face + mirror_shape(face[None])[0]) / 2).float()


def normalise_shape(landmarks: Tensor) -> Tensor:
    """Landmarks ``[B, 68, 2]`` (pixels) -> the face frame ``[B, 68, 2]``: the affine map that
    best puts the ``STABLE`` points on the canonical face's (origin between the eyes, eye line
    along +x, inter-ocular distance 1), applied to all points. Crops of any aspect ratio,
    scales, shears and in-plane rotations of the image leave it unchanged. Plain tensor
    arithmetic (a closed-form 2 x 2 solve), so it traces and exports to ONNX."""
    template = canonical_shape().to(landmarks)[list(STABLE)]  # [S, 2]
    target = template - template.mean(0)
    stable = landmarks[:, list(STABLE)]  # [B, S, 2]
    centre = stable.mean(1, keepdim=True)  # [B, 1, 2]
    spread = (stable - centre).square().mean((1, 2), keepdim=True).sqrt().clamp_min(1e-6)
    x = (stable - centre) / spread  # well conditioned in float32
    # least squares linear map [B, 2, 2] with x @ map ~ target: (x^T x)^-1 x^T target
    gram = x.transpose(1, 2) @ x
    a, b, d = gram[:, 0, 0], gram[:, 0, 1], gram[:, 1, 1]
    inverse = torch.stack([torch.stack([d, -b], -1), torch.stack([-b, a], -1)], 1) / \
        (a * d - b * b).clamp_min(1e-12)[:, None, None]
    linear = inverse @ (x.transpose(1, 2) @ target)
    return (landmarks - centre) / spread @ linear + template.mean(0)


def mirror_shape(shape: Tensor) -> Tensor:
    """A face-frame shape ``[B, 68, 2]`` -> the shape of the mirrored face (x negated, landmark
    indices through ``FLIP_PERMUTATION``, as ``aukit.data.transforms.hflip_face`` does)."""
    mirrored = shape[..., list(FLIP_PERMUTATION), :].clone()
    mirrored[..., 0] = -mirrored[..., 0]
    return mirrored
