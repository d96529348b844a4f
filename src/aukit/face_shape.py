"""The face frame: landmarks with the camera and the crop taken out, and mirror images.

Shapes are ``[B, 68, 2]`` iBUG-68 points; the face frame has its origin between the eye centres,
the eye line along +x and the inter-ocular distance 1, fitted by an affine map on the points
that AUs barely move, so whatever the crop, scale, shear or in-plane rotation, what is left is
the face's own shape: who the person is and the expression.
"""

from __future__ import annotations

import torch
from torch import Tensor

from aukit.au import FLIP_PERMUTATION
from aukit.au_maps import CANONICAL_LANDMARKS

# landmarks that AUs barely move (eye corners, nose bridge and tip, nostril wings): the affine
# fit onto the template uses them only, so it undoes the camera and the crop, not the expression
STABLE = (36, 39, 42, 45, 27, 28, 29, 30, 31, 33, 35)


def canonical_shape() -> Tensor:
    """The canonical face ``[68, 2]``, mirror-symmetric, origin between the eye centres,
    inter-ocular distance 1."""
    face = torch.tensor(CANONICAL_LANDMARKS, dtype=torch.float64)
    right, left = face[36:42].mean(0), face[42:48].mean(0)
    face = (face - (right + left) / 2) / (left - right).norm()
    return ((face + mirror_shape(face[None])[0]) / 2).float()


def normalise_shape(landmarks: Tensor) -> Tensor:
    """Landmarks ``[B, 68, 2]`` (pixels) -> the face frame ``[B, 68, 2]``: the affine map that
    best puts the ``STABLE`` points on the canonical face's (origin between the eyes, eye line
    along +x, inter-ocular distance 1), applied to all points. Crops of any aspect ratio,
    scales, shears and in-plane rotations of the image leave it unchanged."""
    template = canonical_shape().double().to(landmarks.device)
    points = landmarks.double()
    points = torch.cat([points, torch.ones_like(points[..., :1])], -1)  # [B, 68, 3]
    stable = points[:, list(STABLE)]  # [B, S, 3]
    # least squares affine map [B, 3, 2] from the stable points onto the template's
    gram = stable.transpose(1, 2) @ stable
    warp = torch.linalg.solve(gram, stable.transpose(1, 2) @ template[list(STABLE)])
    return (points @ warp).to(landmarks.dtype)


def mirror_shape(shape: Tensor) -> Tensor:
    """A face-frame shape ``[B, 68, 2]`` -> the shape of the mirrored face (x negated, landmark
    indices through ``FLIP_PERMUTATION``, as ``aukit.data.transforms.hflip_face`` does)."""
    mirrored = shape[..., list(FLIP_PERMUTATION), :].clone()
    mirrored[..., 0] = -mirrored[..., 0]
    return mirrored
