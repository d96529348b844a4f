"""RNG state capture: restoring a state replays Python's, NumPy's and torch's draws, from
plain tensors (what ``torch.load(weights_only=True)`` reads)."""

import io
import random

import numpy as np
import torch

from aukit.utils.rng import restore_rng_state, rng_state


def _draws():
    return random.random(), float(np.random.rand()), float(torch.rand(()))


def test_restoring_a_state_replays_every_generator_and_survives_weights_only_loading():
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    _draws()
    buffer = io.BytesIO()
    torch.save(rng_state(), buffer)
    expected = _draws()
    _draws()
    buffer.seek(0)
    restore_rng_state(torch.load(buffer, weights_only=True))
    assert _draws() == expected
