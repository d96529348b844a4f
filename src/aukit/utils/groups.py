"""Person (or video) ids as integer group codes, one rule for the sampler and the losses."""

from __future__ import annotations

from collections.abc import Hashable, Sequence

import numpy as np


def group_codes(groups: Sequence[Hashable]) -> np.ndarray:
    """``B`` ids (any hashable: str, int, a subject tuple) -> ``[B]`` int codes, equal where the
    ids are, numbered in the sorted order of the ids' text (so the same ids get the same codes
    on every rank and in every run)."""
    return np.unique([str(g) for g in groups], return_inverse=True)[1].reshape(-1)
