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
from torch import Tensor, nn

from aukit.au import NUM_LANDMARKS
from aukit.face_shape import mirror_shape, normalise_shape
from aukit.utils.distributed import all_reduce_sum
from aukit.utils.groups import group_codes

# the least-squares map's ridge, relative to the inputs' mean variance: the face frame's affine
# fit leaves 6 directions of the shape without variance
RIDGE = 1e-4


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
    codes = group_codes(groups)
    if np.bincount(codes).max() < 2:
        raise ValueError("the geometry loss compares each face with its person's other faces, "
                         "but no person has two faces in this batch: use person-aware batches "
                         "(--data.faces_per_subject >= 2 with subject ids), or switch it off "
                         "with --model.losses.geometry_weight 0")
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


class LeastSquaresFit(nn.Module):
    """The geometry loss's exact minimiser for a linear map, from every batch seen so far.

    ``geometry_loss`` of a linear map ``x -> W x + b`` is a least-squares problem, so it has a
    closed-form solution: this keeps its sufficient statistics (sums of the inputs, targets and
    their products, float64 buffers, so checkpoints resume exactly) and solves the ridge-
    regularised normal equations. On SynthAU it leaves 1.1% of the test people's target
    unexplained where 450 AdamW steps of the same loss left 6.5% (docs/benchmarks.md).
    Under DDP every rank adds every rank's batch, so all ranks hold the same sums.
    """

    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        for name, shape in (("count", ()), ("sum_x", (in_dim,)), ("sum_y", (out_dim,)),
                            ("sum_xx", (in_dim, in_dim)), ("sum_xy", (in_dim, out_dim))):
            self.register_buffer(name, torch.zeros(shape, dtype=torch.float64))

    @torch.no_grad()
    def update(self, inputs: Tensor, targets: Tensor) -> None:
        """Adds a batch: inputs [B, in_dim], targets [B, out_dim]."""
        x, y = inputs.detach().double().flatten(1), targets.detach().double().flatten(1)
        for name, value in (("count", torch.tensor(float(len(x)), dtype=torch.float64,
                                                   device=x.device)),
                            ("sum_x", x.sum(0)), ("sum_y", y.sum(0)),
                            ("sum_xx", x.T @ x), ("sum_xy", x.T @ y)):
            getattr(self, name).add_(all_reduce_sum(value))

    @torch.no_grad()
    def solve(self, ridge: float = RIDGE) -> tuple[Tensor, Tensor]:
        """-> weight [out_dim, in_dim] and bias [out_dim] (float32) minimising the summed squared
        error plus ``ridge`` times the inputs' mean variance times ``|W|^2``."""
        if self.count < 2:
            raise ValueError("the least-squares fit needs at least two samples")
        n = self.count
        mean_x, mean_y = self.sum_x / n, self.sum_y / n
        cov_xx = self.sum_xx / n - torch.outer(mean_x, mean_x)
        cov_xy = self.sum_xy / n - torch.outer(mean_x, mean_y)
        eye = torch.eye(len(cov_xx), dtype=cov_xx.dtype, device=cov_xx.device)
        penalty = ridge * cov_xx.diagonal().mean().clamp_min(1e-12)
        weight = torch.linalg.solve(cov_xx + penalty * eye, cov_xy)  # [in, out]
        return weight.T.float(), (mean_y - mean_x @ weight).float()
