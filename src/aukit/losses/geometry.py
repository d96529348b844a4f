"""Stage-1 expression-geometry loss: predict, from one image, how the face's landmarks deviate
from its person's other faces.

AUs move facial landmarks, but so does who the person is: raw landmark shapes from a few people
confound the two. A face's shape minus its person's mean shape keeps the expression and drops
the identity. Many people's unlabeled frames, with the landmarks a detector gives for free, are
enough to compute that target, and predicting it from a single image makes the encoder factor
the person out of the geometry, which a few labelled people cannot teach.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence

import numpy as np
import torch
from torch import Tensor

from aukit.au import FLIP_PERMUTATION, NUM_LANDMARKS
from aukit.au_maps import CANONICAL_LANDMARKS

# landmarks that AUs barely move (eye corners, nose bridge and tip, nostril wings): the affine
# fit onto the template uses them only, so it undoes the camera and the crop, not the expression
STABLE = (36, 39, 42, 45, 27, 28, 29, 30, 31, 33, 35)


def _template() -> Tensor:
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
    template = _template().double().to(landmarks.device)
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


def expression_geometry(landmarks: Tensor, groups: Sequence[Hashable]) -> Tensor:
    """Each face's shape minus the mean shape of its group's faces in the batch.

    Args:
        landmarks: ``[B, 68, 2]`` pixels.
        groups: ``B`` person (or video) ids; person-aware batches hold several faces of each.

    Returns:
        ``[B, 68, 2]`` in inter-ocular distances. The mean is taken over each face and its
        mirror image, so a horizontally flipped view gets exactly the mirrored target, whichever
        faces of the group were flipped.

    Raises:
        ValueError: when no group holds two faces (the target would be the asymmetry alone).
    """
    if landmarks.ndim != 3 or landmarks.shape[1:] != (NUM_LANDMARKS, 2) or \
            len(groups) != len(landmarks):
        raise ValueError(f"need landmarks [B, {NUM_LANDMARKS}, 2] and B group ids, got "
                         f"{tuple(landmarks.shape)} and {len(groups)} ids")
    _, codes = np.unique([str(g) for g in groups], return_inverse=True)
    if np.bincount(codes).max() < 2:
        raise ValueError("the geometry loss compares each face with its person's other faces, "
                         "but no person has two faces in this batch: use person-aware batches "
                         "(--data.faces_per_subject >= 2 with subject ids)")
    shape = normalise_shape(landmarks.float())
    symmetric = (shape + mirror_shape(shape)) / 2
    index = torch.as_tensor(codes, device=shape.device)
    members = torch.nn.functional.one_hot(index).T.to(shape.dtype)  # [G, B]
    means = (members @ symmetric.flatten(1)) / members.sum(1, keepdim=True)  # [G, 136]
    return shape - means[index].view_as(shape)


def geometry_loss(prediction: Tensor, target: Tensor) -> Tensor:
    """The share of the target's energy left unexplained: ``sum((p - t)^2) / sum(t^2)`` over the
    batch (``[B, 68, 2]`` each; 1 for a zero prediction, 0 for a perfect one)."""
    return (prediction - target).square().sum() / target.square().sum().clamp_min(1e-12)
