"""Stage-1 expression-geometry loss: predict, from one face, how its landmarks deviate from its
person's other faces.

AUs move facial landmarks, but so does who the person is: raw landmark shapes from a few people
confound the two. A face's shape minus its person's mean shape keeps the expression and drops
the identity. Many people's unlabeled frames, with the landmarks a detector gives for free, are
enough to compute that target, and predicting it from a single face makes the encoder factor
the person out of the geometry, which a few labelled people cannot teach.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence

import numpy as np
import torch
from torch import Tensor

from aukit.au import NUM_LANDMARKS
from aukit.face_shape import mirror_shape, normalise_shape


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
                         "(--data.faces_per_subject >= 2 with subject ids), or switch it off "
                         "with --model.geometry_weight 0")
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
