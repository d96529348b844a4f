"""Settings groups: an instance, a mapping over a stage's defaults, or None, and unknown fields
refused by name."""

from dataclasses import dataclass

import pytest

from aukit.utils.settings import plain, settings


@dataclass(frozen=True)
class Knobs:
    lr: float = 1e-3
    depth: int = 2


def test_a_mapping_fills_in_over_the_given_defaults_and_round_trips():
    stage_default = Knobs(lr=5e-4)
    assert settings(Knobs, {"depth": 4}, stage_default) == Knobs(lr=5e-4, depth=4)
    assert settings(Knobs, None, stage_default) == stage_default
    assert settings(Knobs, None) == Knobs()
    value = Knobs(depth=3)
    assert settings(Knobs, value, stage_default) is value
    assert settings(Knobs, plain(value)) == value and plain(value) == {"lr": 1e-3, "depth": 3}


def test_an_unknown_field_is_refused_with_the_known_ones():
    with pytest.raises(ValueError, match="Knobs has no width; it has lr, depth"):
        settings(Knobs, {"width": 3})
