"""Stage-1 masked-pixel loss: predict the pixels of hidden blocks of the face (SimMIM-style).

The contrastive losses can be met by features that tell images apart without keeping the small
local changes AUs make; predicting hidden pixels from the rest of the face cannot.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def block_mask(batch: int, size: tuple[int, int], block: int, ratio: float,
               device: torch.device | str = "cpu") -> Tensor:
    """Random square blocks to hide: bool ``[B, H, W]``, True where hidden.

    The image is tiled into ``block`` x ``block`` squares and ``round(ratio * squares)`` of each
    image's squares are hidden (at least one, at most all but one).
    """
    h, w = size
    if block <= 0 or h % block or w % block:
        raise ValueError(f"mask block {block} must divide the image size {h}x{w} "
                         "(--model.losses.mask_block)")
    if not 0 < ratio < 1:
        raise ValueError(f"mask ratio must be in (0, 1) (--model.losses.mask_ratio), got {ratio}")
    gh, gw = h // block, w // block
    hidden = min(max(round(ratio * gh * gw), 1), gh * gw - 1)
    order = torch.rand(batch, gh * gw, device=device).argsort(1)
    mask = order < hidden  # a random permutation's first ``hidden`` ranks
    mask = mask.view(batch, gh, gw)
    return mask.repeat_interleave(block, 1).repeat_interleave(block, 2)


def normalise_patches(images: Tensor, patch: int) -> Tensor:
    """[B, C, H, W] -> the same with each ``patch`` x ``patch`` square standardised per channel
    (MAE's normalised-pixel target: local structure, not brightness)."""
    mean = F.avg_pool2d(images, patch)
    var = (F.avg_pool2d(images.square(), patch) - mean.square()).clamp_min(0)
    mean, std = (F.interpolate(t, scale_factor=patch, mode="nearest")
                 for t in (mean, (var + 1e-6).sqrt()))
    return (images - mean) / std


def masked_pixel_loss(predicted: Tensor, images: Tensor, mask: Tensor,
                      patch: int | None = None) -> Tensor:
    """Mean absolute error over the hidden pixels.

    predicted, images: [B, C, H, W] (images: the views before hiding); mask: bool [B, H, W],
    True where hidden; ``patch``: standardise the targets in squares of this size first (None:
    raw pixels).
    """
    if predicted.shape != images.shape or mask.shape != (images.shape[0], *images.shape[2:]):
        raise ValueError(f"shape mismatch: predicted {tuple(predicted.shape)}, images "
                         f"{tuple(images.shape)}, mask {tuple(mask.shape)}")
    target = normalise_patches(images, patch) if patch else images
    weight = mask.unsqueeze(1).to(predicted.dtype)
    error = (predicted - target).abs() * weight
    return error.sum() / (weight.sum() * images.shape[1]).clamp_min(1)
