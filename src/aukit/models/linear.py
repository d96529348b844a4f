"""The plain baselines HiVA has to beat, heads over the same ``AUEncoder``: Swin + one linear
head, and Swin + AU region features + one linear head per AU (no graph, no cross-attention, no
text)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from torch import Tensor, nn

from aukit.au import au_numbers as parse_aus
from aukit.models.encoder import AUEncoder, encoder_config
from aukit.models.region import PerAUHead


class LinearAUClassifier(nn.Module):
    """Swin + global average pooling + linear head. Takes and ignores HiVA's extra inputs.

    Args:
        au_numbers: the AUs it predicts.
        encoder: the ``AUEncoder`` settings; only its backbone is built.
    """

    def __init__(self, au_numbers: Sequence[int | str] | str,
                 encoder: Mapping[str, Any] | None = None):
        super().__init__()
        self.aus = parse_aus(au_numbers)
        self.encoder = AUEncoder(self.aus, **encoder_config(encoder), regions=False)
        dim = self.encoder.token_dim
        self.head = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, len(self.aus)))

    def forward(self, images: Tensor, landmarks: Tensor, *text: Tensor | None) -> dict[str, Tensor]:
        """images [B, 3, H, W] -> {"logits": [B, A]}."""
        return {"logits": self.head(self.encoder(images, landmarks)[0].mean(1))}


class RegionAUClassifier(nn.Module):
    """``AUEncoder`` -> one linear head per AU. Takes and ignores HiVA's text inputs; returns
    the landmark maps (normalised) as its activation maps.

    Args:
        au_numbers: the AUs it predicts.
        encoder: the ``AUEncoder`` settings (a stage-1 encoder loads into ``encoder``).
        dropout: dropout before the heads.
    """

    def __init__(self, au_numbers: Sequence[int | str] | str,
                 encoder: Mapping[str, Any] | None = None, dropout: float = 0.1):
        super().__init__()
        self.aus = parse_aus(au_numbers)
        self.encoder = AUEncoder(self.aus, **encoder_config(encoder))
        self.head = PerAUHead(len(self.aus), self.encoder.embed_dim, dropout)

    def forward(self, images: Tensor, landmarks: Tensor | None,
                *text: Tensor | None) -> dict[str, Tensor]:
        """images [B, 3, H, W], landmarks [B, 68, 2] or None (template) -> "logits" [B, A],
        "au_features" [B, A, E], "act_maps" [B, A, h, w]."""
        _, maps, v = self.encoder(images, landmarks)  # [B, A, N], [B, A, E]
        act_maps = maps / maps.sum(-1, keepdim=True).clamp_min(1e-6)
        return {"logits": self.head(v), "au_features": v,
                "act_maps": act_maps.unflatten(-1, self.encoder.grid)}
