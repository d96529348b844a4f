"""The plain baselines HiVA has to beat: Swin + one linear head, and Swin + AU region features +
one linear head per AU (no graph, no cross-attention, no text)."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from aukit.au import au_numbers as parse_aus
from aukit.models.backbone import SwinBackbone
from aukit.models.region import AURegionEncoder, PerAUHead, encode_regions


class LinearAUClassifier(nn.Module):
    """Swin + global average pooling + linear head. Takes and ignores HiVA's extra inputs."""

    def __init__(self, au_numbers: Sequence[int | str] | str, backbone: str = "swin_test",
                 image_size: int = 128, pretrained_backbone: bool = False, feature_stage: int = 3,
                 conv_stem: bool | None = None):
        super().__init__()
        self.aus = parse_aus(au_numbers)
        self.backbone = SwinBackbone(backbone, image_size, pretrained_backbone, feature_stage,
                                     conv_stem)
        self.head = nn.Sequential(nn.LayerNorm(self.backbone.out_dim),
                                  nn.Linear(self.backbone.out_dim, len(self.aus)))

    def forward(self, images: Tensor, landmarks: Tensor, *text: Tensor | None) -> dict[str, Tensor]:
        """images [B, 3, H, W] -> {"logits": [B, A]}."""
        return {"logits": self.head(self.backbone(images).mean(1))}


class RegionAUClassifier(nn.Module):
    """Swin -> landmark AU attention maps -> ``AURegionEncoder`` -> one linear head per AU.

    ``backbone`` and ``region`` load from a stage-1 checkpoint like HiVA's; ``geometry`` as in
    HiVA. Takes and ignores
    HiVA's text inputs; returns the landmark maps (normalised) as its activation maps.
    """

    def __init__(self, au_numbers: Sequence[int | str] | str, backbone: str = "swin_test",
                 image_size: int = 128, pretrained_backbone: bool = False, feature_stage: int = 3,
                 conv_stem: bool | None = None, embed_dim: int = 128, num_heads: int = 4,
                 region_depth: int = 1, attention_sigma: float = 0.3, dropout: float = 0.1,
                 roi_size: int = 0, roi_extent: float = 0.3, geometry: bool = False):
        super().__init__()
        self.aus = parse_aus(au_numbers)
        self.attention_sigma = attention_sigma
        self.backbone = SwinBackbone(backbone, image_size, pretrained_backbone, feature_stage,
                                     conv_stem)
        self.region = AURegionEncoder(self.backbone.out_dim, embed_dim, len(self.aus), num_heads,
                                      region_depth, dropout=dropout, roi_size=roi_size,
                                      roi_extent=roi_extent, geometry=geometry)
        self.head = PerAUHead(len(self.aus), embed_dim, dropout)

    def forward(self, images: Tensor, landmarks: Tensor | None,
                *text: Tensor | None) -> dict[str, Tensor]:
        """images [B, 3, H, W], landmarks [B, 68, 2] or None (template) -> "logits" [B, A],
        "au_features" [B, A, E], "act_maps" [B, A, h, w]."""
        _, maps, v = encode_regions(self.backbone, self.region, images, landmarks, self.aus,
                                    self.attention_sigma)  # [B, A, N], [B, A, E]
        logits = self.head(v)
        act_maps = maps / maps.sum(-1, keepdim=True).clamp_min(1e-6)
        return {"logits": logits, "au_features": v,
                "act_maps": act_maps.unflatten(-1, self.backbone.grid)}
