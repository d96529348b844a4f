"""Settings groups: dataclasses that LightningCLI shows as nested flags (``--model.optim.lr``)
and that checkpoints keep as plain dicts (so they load with ``torch.load(weights_only=True)``)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, fields, is_dataclass
from typing import Any, TypeVar

T = TypeVar("T")


def settings(cls: type[T], value: T | Mapping[str, Any] | None, default: T | None = None) -> T:
    """``value`` as the settings dataclass ``cls``: an instance as it is, a mapping (a
    checkpoint's hyperparameters, a Python caller's dict) field by field over ``default`` (an
    instance: a stage's own defaults; None: the class's), None the defaults; an unknown field
    is refused with the known ones."""
    if isinstance(value, cls):
        return value
    if is_dataclass(value):
        value = asdict(value)
    value = {**(asdict(default) if default is not None else {}), **(value or {})}
    known = [f.name for f in fields(cls)]
    unknown = sorted(set(value) - set(known))
    if unknown:
        raise ValueError(f"{cls.__name__} has no {', '.join(unknown)}; it has "
                         f"{', '.join(known)}")
    return cls(**value)


def plain(value: Any) -> dict[str, Any]:
    """A settings dataclass as a dict (what hyperparameters and checkpoints hold)."""
    return asdict(value)
