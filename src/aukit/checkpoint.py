"""The hand-over between stages: checkpoint metadata and the stage-1 encoder loader.

Each stage writes ``checkpoint["aukit"] = {"stage": ..., "aus": [...], ...}`` so a checkpoint
says what it holds: a stage-1 checkpoint its ``AUEncoder`` config (``"encoder"``), a finetune
checkpoint its model's config (``"model"``, see ``aukit.models.create_model``). Stage 2 checks
a stage-1 encoder's whole config against its own when it is built (``stage1_meta``, no
weights read) and loads the encoder once, when it starts training
(``load_stage1_encoder``): a stage-2 checkpoint holds those weights and loads without the
stage-1 file.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from aukit.models.encoder import AUEncoder, EncoderSettings, differing_settings
from aukit.utils.settings import plain

META_KEY = "aukit"
# the region encoder's parameters with one row per AU, selected to match the stage-2 AUs
PER_AU_PARAMETERS = ("au_queries", "geometry_embed")
STAGE_HINT = {
    "pretrain": "a stage-1 checkpoint written by `make pretrain` (runs/pretrain/.../last.ckpt)",
    "finetune": "a stage-2 checkpoint written by `make finetune` (runs/finetune/.../best.ckpt)",
}


def read_checkpoint(path: str | Path, stage: str, mmap: bool = False) -> dict[str, Any]:
    """Load a checkpoint on the CPU and check it comes from ``stage``; ``mmap`` maps the tensors
    from the file instead of reading them (for a look at the metadata)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist; expected {STAGE_HINT[stage]}")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=False, mmap=mmap)
    except Exception as err:
        raise ValueError(f"checkpoint {path} could not be read ({err}); is it a complete "
                         f".ckpt file? expected {STAGE_HINT[stage]}") from err
    meta = checkpoint.get(META_KEY) if isinstance(checkpoint, dict) else None
    if meta is None:
        raise ValueError(f"{path} is not an aukit checkpoint (no '{META_KEY}' metadata); "
                         f"expected {STAGE_HINT[stage]}")
    if meta["stage"] != stage:
        raise ValueError(f"{path} is a {meta['stage']} checkpoint, but {stage} is needed here: "
                         f"pass {STAGE_HINT[stage]}")
    return checkpoint


def stage1_meta(path: str | Path, wanted: dict[str, Any], aus: tuple[int, ...],
                region: bool = True) -> dict[str, Any]:
    """The metadata of the stage-1 checkpoint at ``path``, its ``AUEncoder`` config
    (``"encoder"``) checked against a stage-2 encoder's settings ``wanted``
    (``differing_settings``: None adopts the checkpoint's) and AUs; refuses, naming each
    differing setting and its flag, one that does not fit; without ``region`` (the backbone
    alone is handed over) only the backbone's settings count. Maps the file without reading its
    weights."""
    meta = read_checkpoint(path, "pretrain", mmap=True)[META_KEY]
    _check_stage1_encoder(meta, path, wanted, aus, region)
    return meta


def adopt_stage1_settings(path: str | Path, encoder: EncoderSettings, image_size: int,
                          aus: tuple[int, ...], region: bool = True) -> EncoderSettings:
    """``encoder`` with its null ``backbone``, ``conv_stem`` and (with ``region``, where the
    region encoder is handed over) ``geometry`` set to those of the stage-1 checkpoint at
    ``path``, which is checked first (``stage1_meta``: a differing setting is refused)."""
    wanted = plain(encoder)
    stage1 = stage1_meta(path, {**wanted, "image_size": image_size}, aus, region)["encoder"]
    adoptable = ("backbone", "conv_stem", "geometry")[:3 if region else 2]
    return replace(encoder, **{key: stage1[key] for key in adoptable if wanted[key] is None})


def _check_stage1_encoder(meta: dict[str, Any], path: str | Path, wanted: dict[str, Any],
                          aus: tuple[int, ...], region: bool) -> None:
    encoder = meta.get("encoder")
    if encoder is None:
        raise ValueError(f"stage-1 checkpoint {path} stores no encoder config: it was written by "
                         "an older aukit; pretrain again with this version")
    differ = differing_settings(encoder, wanted, region)
    if differ:
        found = ", ".join(f"{k}={encoder.get(k)!r}" for k in differ)
        asked = ", ".join(f"{k}={wanted.get(k)!r}" for k in differ)
        flags = " ".join(f"{_flag(k)} {encoder.get(k)}" for k in differ)
        raise ValueError(f"stage-1 checkpoint {path} was trained with {found} but this model "
                         f"uses {asked}; set {flags}, or pretrain with the same settings")
    missing = [a for a in aus if a not in encoder["au_numbers"]]
    if missing:
        raise ValueError(f"stage-1 checkpoint {path} has no region queries for "
                         f"{[f'AU{a}' for a in missing]} (it was pretrained on "
                         f"{[f'AU{a}' for a in encoder['au_numbers']]}); pretrain with "
                         "--model.aus all")


def load_stage1_encoder(path: str | Path, encoder: AUEncoder, region: bool = True) -> None:
    """Copies the stage-1 checkpoint's encoder into ``encoder`` (checked as by
    ``stage1_meta``): its backbone and, with ``region``, its AU region encoder, whose
    per-AU parameters (queries, geometry embeddings) are selected and reordered to match
    ``encoder.aus``. Normalisation statistics are copied as they are."""
    checkpoint = read_checkpoint(path, "pretrain")
    _check_stage1_encoder(checkpoint[META_KEY], path, encoder.config, encoder.aus, region)
    state = checkpoint["state_dict"]
    encoder.backbone.load_state_dict(_strip(state, "encoder.backbone."))
    if region and encoder.region is not None:
        weights = _strip(state, "encoder.region.")
        stage1_aus = checkpoint[META_KEY]["encoder"]["au_numbers"]
        rows = torch.tensor([stage1_aus.index(a) for a in encoder.aus])
        for name in PER_AU_PARAMETERS:
            if name in weights:
                weights[name] = weights[name][rows]
        encoder.region.load_state_dict(weights)


def _flag(key: str) -> str:
    """The command-line flag of encoder setting ``key``."""
    return "--data.image_size" if key == "image_size" else f"--model.encoder.{key}"


def _strip(state: dict[str, Tensor], prefix: str) -> dict[str, Tensor]:
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def finetune_meta(model_config: dict[str, Any], aus: tuple[int, ...], stage1_path: str | None,
                  text: dict[str, Any] | None) -> dict[str, Any]:
    """What a stage-2 checkpoint says about itself: the model's config, which rebuilds it
    (``aukit.models.create_model``; ImageNet weights are in the state dict), the stage-1
    checkpoint it started from and where its description features come from (``text``:
    encoder, pretrained, weights, descriptions; None for a model without text)."""
    encoder = model_config["encoder"]
    return {"architecture": model_config["architecture"], "backbone": encoder["backbone"],
            "image_size": encoder["image_size"], "feature_stage": encoder["feature_stage"],
            "conv_stem": encoder["conv_stem"], "aus": list(aus), "pretrained": stage1_path,
            "model": {**model_config, "encoder": {**encoder, "pretrained_backbone": False}},
            "text": text}


def self_contained_hparams(hparams: dict[str, Any], built: dict[str, Any]) -> None:
    """Edits a stage-2 checkpoint's ``hyper_parameters`` so that rebuilding the module from them
    (``load_from_checkpoint``, ``fit --ckpt_path``) neither reads the stage-1 file nor ImageNet
    weights again and names the encoder's resolved ``backbone``, ``conv_stem`` and
    ``geometry`` (``built``: the built encoder's config); the state dict holds every weight."""
    hparams.update(pretrained=None, encoder={
        **hparams["encoder"], "pretrained_backbone": False,
        **{k: built[k] for k in ("backbone", "conv_stem", "geometry")}})
