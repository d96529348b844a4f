"""Build AU models by name or from a config: the one place that turns settings into a model.

A config is plain data, a dict that round-trips through YAML and JSON: ``architecture`` names a
registered model class and every other key is one of that class's constructor arguments.
Registered names are architectures (``hiva``, ``linear``, ``region``: the constructor's own
defaults) and presets (an architecture plus settings, e.g. ``hiva_swin_base``)::

    model = create_model("hiva_swin_test", au_numbers="bp4d")
    config = model_config("region", au_numbers=[1, 12], encoder={"roi_size": 4})  # all filled in
    same = create_model(config)                                                 # that model again

Every architecture is a head over an ``AUEncoder`` (``aukit.models.encoder``), whose settings
are the config's ``encoder`` dict.

Training (``finetune``), inference, export and predict all build through ``create_model``, and
a finetune checkpoint stores the config its model was built from (``checkpoint["aukit"]
["model"]``), so a checkpoint is rebuilt from that config, not from the trainer's flags.
A new model family registers its class with ``register_model``, a new preset with
``register_preset``.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

from torch import nn

from aukit.au import au_numbers as parse_aus
from aukit.models.encoder import encoder_config
from aukit.models.hiva import HiVA
from aukit.models.linear import LinearAUClassifier, RegionAUClassifier

ARCHITECTURES: dict[str, type[nn.Module]] = {
    "hiva": HiVA,  # region features -> graph -> DDCA -> CDCA -> MLP + text-anchored heads
    "linear": LinearAUClassifier,  # Swin + one linear head
    "region": RegionAUClassifier,  # Swin + AU region features + one linear head per AU
}

# the synthau config's encoder: 128 px, stage-2 tokens (16 x 16), 4 x 4 ROI windows 15% wide
_SWIN_TEST = {"backbone": "swin_test", "image_size": 128, "feature_stage": 2, "roi_size": 4,
              "roi_extent": 0.15}
# the real-data configs' encoder (conf/finetune/bp4d.yaml): 224 px, stage-3 tokens (7 x 7)
_REAL = {"image_size": 224, "feature_stage": 3, "embed_dim": 256}
# HiVA as the finetune module builds it: with the graph's label co-occurrence prior
_HIVA = {"architecture": "hiva", "cooccurrence_prior": True}
PRESETS: dict[str, dict[str, Any]] = {
    "hiva_swin_test": {**_HIVA, "encoder": _SWIN_TEST},
    "region_swin_test": {"architecture": "region", "encoder": _SWIN_TEST},
    "linear_swin_test": {"architecture": "linear",
                         "encoder": {"backbone": "swin_test", "image_size": 128,
                                     "feature_stage": 2}},
    "hiva_swin_tiny": {**_HIVA, "encoder": {"backbone": "swin_tiny", **_REAL}},
    "hiva_swin_small": {**_HIVA, "encoder": {"backbone": "swin_small", **_REAL}},
    "hiva_swin_base": {**_HIVA, "encoder": {"backbone": "swin_base", **_REAL}},
}


def register_model(name: str, cls: type[nn.Module]) -> None:
    """Make ``cls`` buildable as architecture ``name``. Its constructor takes explicit keyword
    arguments of plain types (the config keys) and ``au_numbers``."""
    if name in ARCHITECTURES or name in PRESETS:
        raise ValueError(f"model name {name!r} is already registered")
    ARCHITECTURES[name] = cls


def register_preset(name: str, architecture: str, **settings: Any) -> None:
    """Make ``name`` stand for ``architecture`` with ``settings``."""
    if name in ARCHITECTURES or name in PRESETS:
        raise ValueError(f"model name {name!r} is already registered")
    model_config(architecture, **{"au_numbers": [1], **settings})  # refuses unknown settings
    PRESETS[name] = {"architecture": architecture, **settings}


def list_models() -> list[str]:
    """Every registered name: the architectures, then the presets."""
    return sorted(ARCHITECTURES) + sorted(PRESETS)


def _plain(key: str, value: Any) -> Any:
    """``value`` as YAML / JSON data (tuples become lists); anything else is refused."""
    if isinstance(value, tuple | list):
        return [_plain(key, v) for v in value]
    if isinstance(value, Mapping):
        return {k: _plain(f"{key}.{k}", v) for k, v in value.items()}
    if value is None or isinstance(value, bool | int | float | str):
        return value
    raise TypeError(f"model config value {key}={value!r} is not plain data (None, bool, int, "
                    "float, str, or lists and dicts of them)")


def model_config(name_or_config: str | Mapping[str, Any], *, strict: bool = True,
                 **overrides: Any) -> dict[str, Any]:
    """The full config of a model: ``architecture`` and every constructor argument, defaults
    filled in, as plain data.

    ``name_or_config`` is a registered name (``list_models()``) or a config; ``overrides``
    replace its values. ``strict=False`` drops the overrides this architecture does not take
    (for callers that hold every architecture's settings at once, like the finetune module's
    flags); otherwise they are refused.
    """
    if isinstance(name_or_config, str):
        if name_or_config in PRESETS:
            base = dict(PRESETS[name_or_config])
        elif name_or_config in ARCHITECTURES:
            base = {"architecture": name_or_config}
        else:
            raise ValueError(f"unknown model {name_or_config!r}; registered: "
                             f"{', '.join(list_models())}")
    else:
        base = dict(name_or_config)
    settings = {**base, **overrides}
    if isinstance(base.get("encoder"), Mapping) and isinstance(overrides.get("encoder"), Mapping):
        settings["encoder"] = {**base["encoder"], **overrides["encoder"]}  # merged, not replaced
    architecture = settings.pop("architecture", None)
    if architecture not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {architecture!r} (--model.architecture); "
                         f"choose one of {', '.join(ARCHITECTURES)}")
    parameters = inspect.signature(ARCHITECTURES[architecture]).parameters
    unknown = sorted(set(settings) - set(parameters))
    if unknown and strict:
        raise ValueError(f"architecture {architecture!r} takes no {', '.join(unknown)}; it takes "
                         f"{', '.join(parameters)}")
    config: dict[str, Any] = {"architecture": architecture}
    for key, parameter in parameters.items():
        if key in settings:
            config[key] = _plain(key, settings[key])
        elif parameter.default is inspect.Parameter.empty:
            raise ValueError(f"architecture {architecture!r} needs {key}")
        else:
            config[key] = _plain(key, parameter.default)
    # one spelling of the AU set (numbers, in order), so equal models have equal configs
    config["au_numbers"] = list(parse_aus(config["au_numbers"]))
    if "encoder" in parameters:  # every encoder setting, filled in
        config["encoder"] = encoder_config(config["encoder"])
    return config


def create_model(name_or_config: str | Mapping[str, Any], **overrides: Any) -> nn.Module:
    """The untrained model ``model_config(name_or_config, **overrides)`` describes, e.g.
    ``create_model("hiva", au_numbers="bp4d", use_graph=False)``."""
    config = model_config(name_or_config, **overrides)
    return ARCHITECTURES[config.pop("architecture")](**config)
