"""HiVA: hierarchical vision-language interaction for AU detection (stage 2).

Swin tokens -> landmark AU attention maps -> AU region features -> AU dynamic graph -> DDCA
(per-AU vision<->text) -> CDCA (all AUs vision<->text, then across AUs) -> fused AU features
-> MLP head and text-anchored cosine head, averaged.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from aukit.au import au_numbers as parse_aus
from aukit.models.cross_attention import CDCA, DDCA
from aukit.models.encoder import AUEncoder, encoder_config
from aukit.models.graph import AUDynamicGraph
from aukit.models.region import MIN_ATTENTION, PerAUHead

# CLIP-style cap so the learned cosine scale cannot blow the logits up
MAX_COSINE_SCALE = 100.0



@dataclass(frozen=True)
class HeadSettings:
    """HiVA's components over the encoder, each a switch (the finetune stage's
    ``--model.heads.*``; the baselines take none of them).

    Args:
        use_graph: the AU-aware dynamic graph over the AU features.
        use_ddca: DDCA, per-AU vision <-> text cross-attention (its maps are the activation
            maps).
        use_cdca: CDCA, all AUs' vision <-> text cross-attention, then across AUs.
        use_text: the LLM-written descriptions as the language prior (false: one learned
            embedding per AU).
        map_prior: bias DDCA's attention by the landmark AU maps.
        graph_top_k: neighbours per AU in the graph (null: all, by softmax).
        cooccurrence_prior: start the graph from the training labels' AU co-occurrence.
        cross_attention_heads: heads of DDCA and CDCA (null: the encoder's num_heads).
        dropout: dropout in the graph, the cross-attention and the heads.
    """

    use_graph: bool = True
    use_ddca: bool = True
    use_cdca: bool = True
    use_text: bool = True
    map_prior: bool = True
    graph_top_k: int | None = 4
    cooccurrence_prior: bool = True
    cross_attention_heads: int | None = None
    dropout: float = 0.1


class HiVA(nn.Module):
    """AU detector with hierarchical vision-language interaction: heads over an ``AUEncoder``.

    Build it by name or from a config with ``aukit.models.create_model``.

    Args:
        au_numbers: the AUs it predicts (numbers, names or a set name such as ``"bp4d"``).
        encoder: the ``AUEncoder`` settings (``aukit.models.encoder.encoder_config``); a
            stage-1 checkpoint's encoder loads into ``encoder``.
        text_dim: the text encoder's feature size (``use_text``).
        use_graph: the AU-aware dynamic graph over the AU features.
        use_ddca: DDCA, per-AU vision <-> text cross-attention (its text->vision weights are
            the activation maps).
        use_cdca: CDCA, all AUs' vision <-> text cross-attention, then across AUs.
        use_text: the language prior; False gives each AU one learnable embedding instead (its
            single text token and its anchor), so DDCA and CDCA still run without text.
        graph_top_k: neighbours per AU in the graph (None: softmax over all).
        cooccurrence_prior: the graph's label co-occurrence prior ``[A, A]``; True reserves it
            as the identity, to be set from the training labels (``graph.set_prior``).
        dropout: dropout in the graph, the cross-attention and the heads.
        map_prior: bias DDCA's text->vision attention by the log landmark AU maps, as the region
            encoder's attention is; without it the maps start uniform.
        region_head: one linear classifier per AU on the region features before the graph
            (``"region_logits"``, deep supervision in training).
        cross_attention_heads: heads of DDCA and CDCA (None: the encoder's ``num_heads``).

    A switched-off component has no parameters.
    """

    def __init__(self, au_numbers: Sequence[int | str] | str,
                 encoder: Mapping[str, Any] | None = None, text_dim: int = 384,
                 use_graph: bool = True, use_ddca: bool = True, use_cdca: bool = True,
                 use_text: bool = True, graph_top_k: int | None = 4,
                 cooccurrence_prior: bool | Tensor | None = None, dropout: float = 0.1,
                 map_prior: bool = True, region_head: bool = True,
                 cross_attention_heads: int | None = None) -> None:
        super().__init__()
        self.aus = parse_aus(au_numbers)
        num_aus = len(self.aus)
        self.use_text = use_text
        self.map_prior = map_prior
        self.encoder = AUEncoder(self.aus, **encoder_config(encoder))
        embed_dim = self.encoder.embed_dim
        num_heads = cross_attention_heads or self.encoder.config["num_heads"]
        self.region_head = PerAUHead(num_aus, embed_dim, dropout) if region_head else None
        self.graph = None
        if cooccurrence_prior is True:
            cooccurrence_prior = torch.eye(num_aus)
        elif cooccurrence_prior is False:
            cooccurrence_prior = None
        if use_graph:
            self.graph = AUDynamicGraph(embed_dim, num_aus, top_k=graph_top_k,
                                        prior=cooccurrence_prior, dropout=dropout)
        if use_text:
            self.text_proj = nn.Linear(text_dim, embed_dim)
        else:
            self.au_embedding = nn.Parameter(torch.randn(num_aus, embed_dim) * 0.02)
        self.patch_proj = self.ddca = self.cdca = self.fuse = None
        if use_ddca:
            d = self.encoder.token_dim
            self.patch_proj = nn.Sequential(nn.LayerNorm(d), nn.Linear(d, embed_dim))
            self.ddca = DDCA(embed_dim, num_heads, dropout)
        if use_cdca:
            self.cdca = CDCA(embed_dim, num_heads, dropout)
        if use_ddca or use_cdca:
            # the text side only carries image information after DDCA or CDCA; fusing it
            # earlier would only add a per-AU constant
            self.fuse = nn.Sequential(nn.LayerNorm(2 * embed_dim),
                                      nn.Linear(2 * embed_dim, embed_dim))
        self.mlp_head = nn.Sequential(nn.LayerNorm(embed_dim), nn.Linear(embed_dim, embed_dim),
                                      nn.GELU(), nn.Dropout(dropout))
        self.au_classifier = nn.Parameter(torch.randn(num_aus, embed_dim) * embed_dim ** -0.5)
        self.au_classifier_bias = nn.Parameter(torch.zeros(num_aus))
        self.cosine_log_scale = nn.Parameter(torch.tensor(math.log(10.0)))
        self.cosine_bias = nn.Parameter(torch.zeros(num_aus))

    @property
    def num_aus(self) -> int:
        return len(self.aus)

    def no_weight_decay(self) -> set[str]:
        """The learned AU embeddings (of the no-text ablation) are embeddings, not weights: no
        weight decay (``aukit.optim``)."""
        return {"au_embedding"}

    def text_inputs(self, text_tokens: Tensor | None, text_mask: Tensor | None,
                    text_vec: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
        """Raw text features -> (tokens [A, T, E], mask [A, T] bool, anchors [A, E]).

        text_tokens [A, T, Dt] (the sampled descriptions of each AU flattened, T = M * L),
        text_mask [A, T] bool (True = real token; None = all real), text_vec [A, Dt]. Ignored
        when the model was built with ``use_text=False``.
        """
        if not self.use_text:
            tokens = self.au_embedding.unsqueeze(1)  # [A, 1, E]
            mask = torch.ones(tokens.shape[:2], dtype=torch.bool, device=tokens.device)
            return tokens, mask, self.au_embedding
        if text_tokens is None or text_vec is None:
            raise ValueError("HiVA was built with use_text=True, so forward needs text_tokens "
                             "[A, T, Dt] and text_vec [A, Dt] (see aukit.text.features); "
                             "build it with use_text=False for the no-text ablation")
        a = self.num_aus
        if text_tokens.dim() != 3 or text_tokens.shape[0] != a or text_vec.shape[0] != a:
            raise ValueError(f"text features must cover the model's {a} AUs in order: got "
                             f"text_tokens {tuple(text_tokens.shape)} and text_vec "
                             f"{tuple(text_vec.shape)}, expected [{a}, T, Dt] and [{a}, Dt]")
        if text_mask is None:
            text_mask = torch.ones(text_tokens.shape[:2], dtype=torch.bool,
                                   device=text_tokens.device)
        return self.text_proj(text_tokens), text_mask, self.text_proj(text_vec)

    def forward(self, images: Tensor, landmarks: Tensor | None, text_tokens: Tensor | None = None,
                text_mask: Tensor | None = None,
                text_vec: Tensor | None = None) -> dict[str, Tensor]:
        """images [B, 3, H, W], landmarks [B, 68, 2] (pixels; None = the canonical aligned face),
        text as in ``text_inputs`` ->
        dict with "logits", "mlp_logits", "cos_logits" [B, A]; "au_features" [B, A, E];
        "text_anchors" [A, E]; "act_maps" [B, A, h, w] (rows sum to 1 over h * w);
        "adjacency" [B, A, A] when the graph is on; "region_logits" [B, A] with the region
        head."""
        h, w = self.encoder.grid
        tokens, maps, v = self.encoder(images, landmarks)  # [B, N, D], [B, A, N], [B, A, E]
        out: dict[str, Tensor] = {}
        if self.region_head is not None:
            out["region_logits"] = self.region_head(v)
        if self.graph is not None:
            v, out["adjacency"] = self.graph(v)
        text_tokens, text_mask, anchors = self.text_inputs(text_tokens, text_mask, text_vec)
        t = anchors.unsqueeze(0).expand_as(v)  # [B, A, E]
        # without DDCA the landmark maps, normalised like attention, are the activation maps
        act_maps = maps / maps.sum(-1, keepdim=True).clamp_min(1e-6)
        if self.ddca is not None:
            bias = maps.clamp_min(MIN_ATTENTION).log() if self.map_prior else None
            v, t, act_maps = self.ddca(v, self.patch_proj(tokens), text_tokens, text_mask, anchors,
                                       bias)
        if self.cdca is not None:
            v, t = self.cdca(v, t)
        if self.fuse is not None:
            v = v + self.fuse(torch.cat([v, t], dim=-1))
        mlp_logits = (self.mlp_head(v) * self.au_classifier).sum(-1) + self.au_classifier_bias
        cosine = (F.normalize(v, dim=-1) * F.normalize(anchors, dim=-1)).sum(-1)  # [B, A]
        scale = self.cosine_log_scale.exp().clamp(max=MAX_COSINE_SCALE)
        cos_logits = scale * cosine + self.cosine_bias
        out.update(logits=(mlp_logits + cos_logits) / 2, mlp_logits=mlp_logits,
                   cos_logits=cos_logits, au_features=v, text_anchors=anchors,
                   act_maps=act_maps.unflatten(-1, (h, w)))
        return out
