"""Freezing named parts of a model (``--model.freeze``)."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn


def freeze_parts(model: nn.Module, names: Sequence[str], architecture: str = "model") -> None:
    """Stops ``model``'s submodules or parameters ``names`` (dotted paths, e.g.
    ``encoder.region.geometry``, ``encoder.backbone``) from training; a part the model has
    switched off (None on the way) has nothing to freeze. A name the model lacks is refused,
    naming ``architecture``."""
    for name in names:
        part = model
        for attribute in name.split("."):
            if not hasattr(part, attribute):
                raise ValueError(f"--model.freeze names {name!r}, which this model "
                                 f"({architecture}) does not have; name submodules such as "
                                 "encoder.backbone, encoder.region or encoder.region.geometry")
            part = getattr(part, attribute)
            if part is None:
                break
        if isinstance(part, nn.Module | nn.Parameter):
            part.requires_grad_(False)
