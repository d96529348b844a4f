"""Activation-map grids: one tile per AU, rows filled to the column count, the map overlaid."""

import numpy as np
import torch

from aukit.visualize import activation_grid


def test_the_grid_has_a_tile_per_au_and_the_map_shows_where_it_peaks():
    image = torch.zeros(3, 32, 32)
    maps = torch.zeros(4, 4, 4)
    maps[0, 3, 0] = 1.0  # AU A's map peaks bottom left
    grid = activation_grid(image, maps, ["A", "B", "C", "D"], probs=torch.rand(4), cols=3)
    assert grid.shape == (64, 96, 3) and grid.dtype == np.uint8  # 2 rows x 3 columns
    tile = grid[:32, :32].astype(int)
    assert (tile[26:, :6, 0] > tile[26:, 26:, 0] + 50).all()  # red where it peaks, blue away
    assert (grid[32:, 32:] == 0).all()  # the padding tiles stay black (5th and 6th)
