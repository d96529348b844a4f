"""Dual cross-attention between AU visual features and AU text features.

DDCA (disentangled) works per AU: AU k only ever sees its own text, and AU k's text attends
over the image patches to give AU k's activation map. CDCA (contextual) lets all AU visual
and text features attend to each other, then the visual AU features to each other.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class CrossAttentionBlock(nn.Module):
    """Pre-norm residual block: ``q + Attn(LN(q), LN(ctx))``, then ``+ MLP(LN(.))``; ``dropout``
    acts in the MLP."""

    def __init__(self, dim: int, num_heads: int, dropout: float = 0.0) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.norm_q = nn.LayerNorm(dim)
        self.norm_ctx = nn.LayerNorm(dim)
        # no attention dropout: the returned weights are activation maps and must sum to 1
        self.attn = nn.MultiheadAttention(dim, num_heads, batch_first=True)
        self.norm_mlp = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Dropout(dropout),
                                 nn.Linear(4 * dim, dim), nn.Dropout(dropout))

    def forward(self, q: Tensor, ctx: Tensor, ctx_mask: Tensor | None = None,
                bias: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """q [B, Q, D], ctx [B, K, D], ctx_mask [B, K] bool (True = attend), bias [B, Q, K]
        added to every head's attention logits -> (out [B, Q, D], attention weights averaged
        over heads [B, Q, K])."""
        padding = None if ctx_mask is None else ~ctx_mask
        if bias is not None:  # [B * heads, Q, K], batch-major as MultiheadAttention wants
            bias = bias.to(q.dtype).repeat_interleave(self.attn.num_heads, dim=0)
        ctx = self.norm_ctx(ctx)
        attended, weights = self.attn(self.norm_q(q), ctx, ctx, key_padding_mask=padding,
                                      attn_mask=bias, need_weights=True,
                                      average_attn_weights=True)
        out = q + attended
        return out + self.mlp(self.norm_mlp(out)), weights


class DDCA(nn.Module):
    """Disentangled Dual Cross-Attention: block-diagonal over AUs.

    vision->text: v_k (one query per image) attends over AU k's text tokens only; the AU axis
    is folded into the attention batch, so AU k cannot see AU j's text by construction.
    text->vision: the query for AU k is ``text_vec_k + v_k`` -- AU k's language prior
    conditioned on this image's AU k feature, so the map can follow the individual face
    (e.g. an asymmetric AU) -- and attends over the patch tokens, its logits optionally
    biased by ``log`` of AU k's landmark map (``map_bias``) so it starts from where AU k acts
    and learns where to look within and around it. Its attention weights (mean over heads) are
    AU k's activation map.
    """

    def __init__(self, dim: int, num_heads: int = 4, dropout: float = 0.0) -> None:
        super().__init__()
        self.vision_to_text = CrossAttentionBlock(dim, num_heads, dropout)
        self.text_to_vision = CrossAttentionBlock(dim, num_heads, dropout)

    def forward(self, v: Tensor, patches: Tensor, text_tokens: Tensor, text_mask: Tensor,
                text_vec: Tensor, map_bias: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """v [B, A, E], patches [B, N, E], text_tokens [A, T, E], text_mask [A, T] bool
        (True = real token), text_vec [A, E], map_bias [B, A, N] or None ->
        (v_out [B, A, E], t_out [B, A, E], act_maps [B, A, N], rows summing to 1)."""
        _check_ddca_inputs(v, patches, text_tokens, text_mask, text_vec)
        # AUs as the attention batch, images as its queries: [A, B, E] over [A, T, E]
        v_out, _ = self.vision_to_text(v.transpose(0, 1), text_tokens, text_mask)
        t_query = text_vec.unsqueeze(0) + v  # [B, A, E]
        t_out, act_maps = self.text_to_vision(t_query, patches, bias=map_bias)
        return v_out.transpose(0, 1), t_out, act_maps


def _check_ddca_inputs(v: Tensor, patches: Tensor, text_tokens: Tensor, text_mask: Tensor,
                       text_vec: Tensor) -> None:
    if v.dim() != 3 or patches.dim() != 3 or text_tokens.dim() != 3:
        raise ValueError(f"DDCA expects v [B, A, E], patches [B, N, E], text_tokens [A, T, E]; "
                         f"got {tuple(v.shape)}, {tuple(patches.shape)}, "
                         f"{tuple(text_tokens.shape)}")
    b, a, e = v.shape
    if patches.shape[0] != b or patches.shape[2] != e:
        raise ValueError(f"patches {tuple(patches.shape)} do not match v {tuple(v.shape)}: "
                         f"expected [{b}, N, {e}] (project the tokens to E first)")
    if text_tokens.shape[0] != a or text_tokens.shape[2] != e:
        raise ValueError(f"text_tokens {tuple(text_tokens.shape)} do not match v "
                         f"{tuple(v.shape)}: expected [{a}, T, {e}]")
    if text_mask.shape != text_tokens.shape[:2] or text_mask.dtype != torch.bool:
        raise ValueError(f"text_mask must be a bool tensor of shape "
                         f"{tuple(text_tokens.shape[:2])}, got {text_mask.dtype} "
                         f"{tuple(text_mask.shape)}")
    if not text_mask.any(dim=1).all():
        empty = text_mask.any(dim=1).logical_not().nonzero().flatten().tolist()
        raise ValueError(f"AU rows {empty} have no unmasked text token; every AU needs at least "
                         "one description token")
    if text_vec.shape != (a, e):
        raise ValueError(f"text_vec must be [{a}, {e}], got {tuple(text_vec.shape)}")


class CDCA(nn.Module):
    """Contextual Dual Cross-Attention: full (not block-diagonal) attention between the set of
    AU visual features and the set of AU text features, then self-attention across the visual
    AU features for inter-AU dependencies."""

    def __init__(self, dim: int, num_heads: int = 4, dropout: float = 0.0) -> None:
        super().__init__()
        self.vision_to_text = CrossAttentionBlock(dim, num_heads, dropout)
        self.text_to_vision = CrossAttentionBlock(dim, num_heads, dropout)
        self.vision_self = CrossAttentionBlock(dim, num_heads, dropout)

    def forward(self, v: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """v [B, A, E], t [B, A, E] -> (v_out [B, A, E], t_out [B, A, E])."""
        if v.dim() != 3 or v.shape != t.shape:
            raise ValueError(f"CDCA expects v and t of the same shape [B, A, E], got "
                             f"{tuple(v.shape)} and {tuple(t.shape)}")
        # both directions read the inputs, so neither side sees the other's update first
        v_mid, _ = self.vision_to_text(v, t)
        t_out, _ = self.text_to_vision(t, v)
        v_out, _ = self.vision_self(v_mid, v_mid)
        return v_out, t_out
