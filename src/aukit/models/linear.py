"""The plain baseline: Swin tokens, global average pooling, one linear layer."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from aukit.au import au_numbers as parse_aus
from aukit.models.backbone import SwinBackbone


class LinearAUClassifier(nn.Module):
    """Swin + linear head: the reference HiVA has to beat. Takes and ignores HiVA's extra inputs."""

    def __init__(self, au_numbers: Sequence[int | str] | str, backbone: str = "swin_test",
                 image_size: int = 128, pretrained_backbone: bool = False, feature_stage: int = 3):
        super().__init__()
        self.aus = parse_aus(au_numbers)
        self.backbone = SwinBackbone(backbone, image_size, pretrained_backbone, feature_stage)
        self.head = nn.Sequential(nn.LayerNorm(self.backbone.out_dim),
                                  nn.Linear(self.backbone.out_dim, len(self.aus)))

    def forward(self, images: Tensor, landmarks: Tensor, *text: Tensor | None) -> dict[str, Tensor]:
        """images [B, 3, H, W] -> {"logits": [B, A]}."""
        return {"logits": self.head(self.backbone(images).mean(1))}
