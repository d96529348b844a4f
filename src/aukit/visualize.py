"""Per-AU activation-map grids: one face tile per AU with its map overlaid."""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np
from torch import Tensor

from aukit.data.transforms import denormalize


def activation_grid(image: Tensor, maps: Tensor, au_names: Sequence[str],
                    probs: Tensor | None = None, cols: int = 6) -> np.ndarray:
    """image [3, H, W] (normalised), maps [A, h, w] -> uint8 RGB grid [rows*H, cols*W, 3].

    Each tile is the face with AU k's map (scaled to its own maximum) as a JET overlay, titled
    with the AU name and, when given, its predicted probability.
    """
    face = denormalize(image).clamp(0, 255).byte().permute(1, 2, 0).cpu().numpy()  # [H, W, 3]
    height, width = face.shape[:2]
    tiles = []
    for k, name in enumerate(au_names):
        heat = maps[k].float().cpu().numpy()
        heat = cv2.resize(heat / max(float(heat.max()), 1e-8), (width, height),
                          interpolation=cv2.INTER_CUBIC)
        colour = cv2.applyColorMap(np.uint8(255 * heat.clip(0, 1)), cv2.COLORMAP_JET)
        tile = cv2.addWeighted(face, 0.55, cv2.cvtColor(colour, cv2.COLOR_BGR2RGB), 0.45, 0)
        title = name if probs is None else f"{name} {float(probs[k]):.2f}"
        cv2.putText(tile, title, (3, 12), cv2.FONT_HERSHEY_SIMPLEX, 0.38, (255, 255, 255), 1,
                    cv2.LINE_AA)
        tiles.append(tile)
    cols = min(cols, len(tiles))
    tiles += [np.zeros_like(face)] * (-len(tiles) % cols)
    rows = [np.concatenate(tiles[i:i + cols], axis=1) for i in range(0, len(tiles), cols)]
    return np.concatenate(rows, axis=0)
