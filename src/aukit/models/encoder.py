"""The AU encoder: Swin backbone + landmark AU attention maps + AU region encoder (+ geometry).

What stage 1 trains and checkpoints, and what every stage-2 model (HiVA, the region and the
linear baselines) is a head over. It is built from one config, plain data
(``AUEncoder.config``), which a stage-1 checkpoint stores; stage 2 loads a stage-1 encoder only
when the whole config agrees (``aukit.checkpoint``).
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from torch import Tensor, nn

from aukit.au import au_numbers as parse_aus
from aukit.models.backbone import SwinBackbone
from aukit.models.region import AURegionEncoder, ExpressionGeometry, face_landmarks, landmark_maps

# settings that change only how an encoder trains or where its first weights come from, not how
# a trained one computes: a stage-1 encoder loads whatever these are (the others must agree)
TRAINING_ONLY = ("dropout", "pretrained_backbone")
# the settings the backbone alone is built from (a hand-over of the backbone compares these)
BACKBONE_SETTINGS = ("backbone", "image_size", "feature_stage", "conv_stem")



@dataclass(frozen=True)
class EncoderSettings:
    """The AU encoder's settings (each stage's ``--model.encoder.*``; its image size is the
    data's, ``--data.image_size``). A stage-1 encoder hands over to stage 2 only where they
    agree (``TRAINING_ONLY`` aside); in stage 2, null adopts the stage-1 checkpoint's.

    Args:
        backbone: the Swin preset (``aukit.models.backbone``): swin_test, swin_tiny, swin_base.
        pretrained_backbone: start the Swin from timm's ImageNet weights (a download).
        feature_stage: the Swin stage whose tokens the AU regions pool (2: 16 x 16 at 128 px).
        conv_stem: 3x3 stride-2 convolutions instead of the 4x4 patchify (null: the preset's).
        embed_dim: the AU region features' size.
        num_heads: attention heads of the region transformer.
        region_depth: region transformer blocks.
        attention_sigma: the AU attention maps' width, in inter-ocular distances.
        dropout: dropout in the region transformer.
        roi_size: a k x k token window per AU around its centre (0: the map-weighted mean).
        roi_extent: that window's side, as a fraction of the image side.
        geometry: the expression-geometry branch (landmark shape -> each AU's query).
    """

    backbone: str | None = "swin_test"
    pretrained_backbone: bool = False
    feature_stage: int = 3
    conv_stem: bool | None = None
    embed_dim: int = 128
    num_heads: int = 4
    region_depth: int = 1
    attention_sigma: float = 0.3
    dropout: float = 0.1
    roi_size: int = 0
    roi_extent: float = 0.3
    geometry: bool | None = False

    def config(self, image_size: int) -> dict[str, Any]:
        """The ``AUEncoder`` arguments (the AU list aside) at ``image_size`` pixels; a null
        backbone is swin_test and a null geometry off."""
        values = {**asdict(self), "image_size": image_size}
        values["backbone"] = values["backbone"] or "swin_test"
        values["geometry"] = bool(values["geometry"])
        return encoder_config(values)

class AUEncoder(nn.Module):
    """images + landmarks -> backbone tokens, AU attention maps and per-AU region features.

    Args:
        au_numbers: the AUs with a region feature each (numbers, names or a set name).
        backbone: the Swin preset (``aukit.models.backbone``), e.g. ``swin_test``, ``swin_base``.
        image_size: input side in pixels.
        pretrained_backbone: start the Swin from timm's ImageNet weights (a download).
        feature_stage: the Swin stage whose tokens the regions pool (2: 16 x 16 at 128 px).
        conv_stem: 3x3 stride-2 convolutions instead of the 4x4 patchify (None: the preset's).
        embed_dim: AU region feature size.
        num_heads: attention heads of the region transformer.
        region_depth: region transformer blocks.
        attention_sigma: AU attention map width, in inter-ocular distances.
        dropout: dropout in the region transformer.
        roi_size: a ``k x k`` token window per AU around its centre (0: map-weighted mean).
        roi_extent: that window's side as a fraction of the image side.
        geometry: the expression-geometry branch (landmark shape -> each AU's query).
        regions: False builds the backbone alone (the linear baseline reads only its tokens).
    """

    def __init__(self, au_numbers: Sequence[int | str] | str, backbone: str = "swin_test",
                 image_size: int = 128, pretrained_backbone: bool = False,
                 feature_stage: int = 3, conv_stem: bool | None = None, embed_dim: int = 128,
                 num_heads: int = 4, region_depth: int = 1, attention_sigma: float = 0.3,
                 dropout: float = 0.1, roi_size: int = 0, roi_extent: float = 0.3,
                 geometry: bool = False, regions: bool = True) -> None:
        super().__init__()
        self.aus = parse_aus(au_numbers)
        self.backbone = SwinBackbone(backbone, image_size, pretrained_backbone, feature_stage,
                                     conv_stem)
        self.region = AURegionEncoder(self.backbone.out_dim, embed_dim, len(self.aus), num_heads,
                                      region_depth, dropout=dropout, roi_size=roi_size,
                                      roi_extent=roi_extent, geometry=geometry) \
            if regions else None
        self.attention_sigma = attention_sigma
        self.config: dict[str, Any] = {
            "au_numbers": list(self.aus), "backbone": backbone, "image_size": image_size,
            "pretrained_backbone": pretrained_backbone, "feature_stage": feature_stage,
            "conv_stem": self.backbone.conv_stem, "embed_dim": embed_dim, "num_heads": num_heads,
            "region_depth": region_depth, "attention_sigma": attention_sigma,
            "dropout": dropout, "roi_size": roi_size, "roi_extent": roi_extent,
            "geometry": geometry}

    @property
    def grid(self) -> tuple[int, int]:
        """The token grid ``(h, w)``."""
        return self.backbone.grid

    @property
    def token_dim(self) -> int:
        """The backbone tokens' channels ``D``."""
        return self.backbone.out_dim

    @property
    def embed_dim(self) -> int:
        """The AU region features' size ``E``."""
        return self.config["embed_dim"]

    @property
    def geometry(self) -> ExpressionGeometry | None:
        """The expression-geometry branch, or None."""
        return None if self.region is None else self.region.geometry

    def maps(self, images: Tensor, landmarks: Tensor | None) -> Tensor:
        """AU attention maps ``[B, A, N]`` on the token grid from landmarks ``[B, 68, 2]`` in
        the pixels of ``images`` ``[B, 3, H, W]`` (None: the canonical face)."""
        return landmark_maps(landmarks, images, self.grid, self.aus, self.attention_sigma)

    def forward(self, images: Tensor,
                landmarks: Tensor | None) -> tuple[Tensor, Tensor | None, Tensor | None]:
        """images [B, 3, H, W], landmarks [B, 68, 2] (pixels) or None (the canonical face) ->
        tokens [B, N, D], maps [B, A, N] and AU features [B, A, E] (None and None without
        ``regions``)."""
        tokens = self.backbone(images)
        if self.region is None:
            return tokens, None, None
        landmarks = face_landmarks(landmarks, images)
        maps = self.maps(images, landmarks).to(tokens.dtype)
        return tokens, maps, self.region(tokens, maps, landmarks)

    def features(self, images: Tensor, landmarks: Tensor | None) -> tuple[Tensor, Tensor]:
        """-> tokens [B, N, D] and AU features [B, A, E] (what the stage-1 losses read)."""
        tokens, _, features = self(images, landmarks)
        return tokens, features


def encoder_config(settings: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Every ``AUEncoder`` argument but the AU list, ``settings`` over the defaults, as plain
    data (what a model config holds under ``"encoder"``); unknown settings are refused and an
    AU list (``AUEncoder.config`` has one) is left out: the model's AUs are its own."""
    settings = {k: v for k, v in (settings or {}).items() if k != "au_numbers"}
    parameters = inspect.signature(AUEncoder).parameters
    keys = [k for k in parameters if k not in ("au_numbers", "regions")]
    unknown = sorted(set(settings) - set(keys))
    if unknown:
        raise ValueError(f"the AU encoder takes no {', '.join(unknown)}; it takes "
                         f"{', '.join(keys)}")
    return {k: settings.get(k, parameters[k].default) for k in keys}


def differing_settings(stage1: dict[str, Any], wanted: dict[str, Any],
                       region: bool = True) -> list[str]:
    """The encoder settings (``AUEncoder.config`` keys) where ``wanted`` differs from a stage-1
    encoder's ``stage1``: all but ``TRAINING_ONLY`` and the AU list (stage 2 selects its AUs'
    rows), or without ``region`` only ``BACKBONE_SETTINGS`` (the backbone alone is handed
    over); a ``wanted`` value of None adopts the stage-1 one."""
    keys = sorted((set(stage1) | set(wanted)) - set(TRAINING_ONLY) - {"au_numbers"})
    if not region:
        keys = [k for k in keys if k in BACKBONE_SETTINGS]
    return [k for k in keys if wanted.get(k) is not None and stage1.get(k) != wanted.get(k)]
