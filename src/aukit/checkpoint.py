"""The hand-over between stages: checkpoint metadata and the stage-1 encoder loader.

Each stage writes ``checkpoint["aukit"] = {"stage": ..., "backbone": ..., "image_size": ...,
"aus": [...], ...}`` so a checkpoint says what it holds (a finetune checkpoint also stores its
model's config, ``"model"``, see ``aukit.models.create_model``). Stage 2 checks a stage-1
checkpoint's settings when it is built (``stage1_settings``, no weights read) and loads its
backbone and AU region encoder once, when it starts training (``load_stage1_encoder``,
``Stage1Encoder.load_into``): a stage-2 checkpoint holds those weights and loads without the
stage-1 file.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

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


@dataclass
class Stage1Encoder:
    """Backbone and region-encoder weights from a stage-1 checkpoint, restricted to some AUs."""

    meta: dict[str, Any]
    backbone: dict[str, Tensor]
    region: dict[str, Tensor]
    path: Path

    def load_into(self, model: nn.Module, region: bool = True, shrink: float = 1.0) -> None:
        """Copy the weights into ``model.backbone`` and, with ``region`` and where it has one,
        ``model.region``; ``shrink`` < 1 keeps ``shrink`` of each loaded parameter and ``1 -
        shrink`` of the module's own (fresh) value. Normalisation statistics are copied as
        they are."""
        parts = [(model.backbone, self.backbone)]
        if region and hasattr(model, "region"):
            parts.append((model.region, self.region))
        for module, weights in parts:
            fresh = [p.detach().clone() for p in module.parameters()] if shrink < 1 else None
            module.load_state_dict(weights)
            if fresh is not None:
                with torch.no_grad():
                    for param, init in zip(module.parameters(), fresh, strict=True):
                        param.lerp_(init, 1 - shrink)


def stage1_settings(path: str | Path, backbone: str | None, image_size: int, feature_stage: int,
                    aus: Sequence[int], conv_stem: bool | None = None, roi_size: int = 0,
                    roi_extent: float = 0.3, geometry: bool | None = None) -> dict[str, Any]:
    """The metadata of the stage-1 checkpoint at ``path`` (its ``backbone``, ``conv_stem``, ...),
    checked against a stage-2 model built with these settings; refuses, with the flag to set,
    one that does not fit. ``backbone=None`` / ``conv_stem=None`` / ``geometry=None`` accept the
    checkpoint's.
    Maps the file without reading its weights."""
    meta = read_checkpoint(path, "pretrain", mmap=True)[META_KEY]
    _check_stage1(meta, path, backbone, image_size, feature_stage, aus, conv_stem, roi_size,
                  roi_extent, geometry)
    return meta


def load_stage1_encoder(path: str | Path, backbone: str | None, image_size: int, feature_stage: int,
                        aus: Sequence[int], conv_stem: bool | None = None, roi_size: int = 0,
                        roi_extent: float = 0.3, geometry: bool | None = None) -> Stage1Encoder:
    """Read a stage-1 checkpoint for a stage-2 model built with these settings (checked as by
    ``stage1_settings``). The region encoder's per-AU parameters (queries, geometry embeddings)
    are selected (and reordered) to match ``aus``.
    """
    checkpoint = read_checkpoint(path, "pretrain")
    meta = checkpoint[META_KEY]
    _check_stage1(meta, path, backbone, image_size, feature_stage, aus, conv_stem, roi_size,
                  roi_extent, geometry)
    state = checkpoint["state_dict"]
    backbone_state = _strip(state, "backbone.")
    region_state = _strip(state, "region.")
    rows = torch.tensor([meta["aus"].index(a) for a in aus])
    for name in PER_AU_PARAMETERS:
        if name in region_state:
            region_state[name] = region_state[name][rows]
    return Stage1Encoder(meta, backbone_state, region_state, Path(path))


def _check_stage1(meta: dict[str, Any], path: str | Path, backbone: str | None, image_size: int,
                  feature_stage: int, aus: Sequence[int], conv_stem: bool | None, roi_size: int,
                  roi_extent: float, geometry: bool | None) -> None:
    meta.setdefault("conv_stem", False)  # written before the conv stem existed
    meta.setdefault("roi_size", 0)  # ... and before ROI pooling
    meta.setdefault("roi_extent", 0.3)
    meta.setdefault("geometry", False)  # ... and before the geometry branch
    wanted = {"backbone": backbone, "image_size": image_size, "feature_stage": feature_stage,
              "conv_stem": conv_stem, "roi_size": roi_size,
              "roi_extent": roi_extent if roi_size else None, "geometry": geometry}
    for key, value in wanted.items():
        if value is not None and meta[key] != value:
            raise ValueError(
                f"stage-1 checkpoint {path} was trained with {key}={meta[key]!r} but this model "
                f"uses {key}={value!r}; set --model.{key} {meta[key]} (and --data.image_size for "
                f"the image size), or pretrain with the same setting")
    missing = [a for a in aus if a not in meta["aus"]]
    if missing:
        raise ValueError(f"stage-1 checkpoint {path} has no region queries for "
                         f"{[f'AU{a}' for a in missing]} (it was pretrained on "
                         f"{[f'AU{a}' for a in meta['aus']]}); pretrain with --model.aus all")


def _strip(state: dict[str, Tensor], prefix: str) -> dict[str, Tensor]:
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
