"""AU region features: attention-map pooling followed by a per-AU region transformer."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from aukit.au import NUM_LANDMARKS
from aukit.au_maps import au_attention_maps, canonical_landmarks
from aukit.face_shape import canonical_shape, normalise_shape

# floor for log-attention biases: a token at the far side of the face keeps a little weight
MIN_ATTENTION = 1e-4
# face-frame shapes in tenths of the inter-ocular distance: expression moves are then O(0.1-1)
SHAPE_SCALE = 10.0


def face_landmarks(landmarks: Tensor | None, images: Tensor) -> Tensor:
    """``landmarks`` ``[B, 68, 2]`` in the pixels of ``images`` ``[B, 3, H, W]``, or for None
    the canonical face at their size."""
    if landmarks is not None:
        return landmarks
    # ints even under torch.jit.trace (export), where shapes are tensors
    size = (int(images.shape[-2]), int(images.shape[-1]))
    template = torch.from_numpy(canonical_landmarks(size))
    return template.to(images.device).expand(len(images), -1, -1)


def landmark_maps(landmarks: Tensor | None, images: Tensor, grid: tuple[int, int],
                  aus: tuple[int, ...], sigma: float) -> Tensor:
    """AU attention maps ``[B, A, N]`` (N = h * w) on the backbone ``grid`` from landmarks
    ``[B, 68, 2]`` in the pixels of ``images`` ``[B, 3, H, W]``; None = the canonical face."""
    size = (int(images.shape[-2]), int(images.shape[-1]))
    landmarks = face_landmarks(landmarks, images)
    return au_attention_maps(landmarks, size, grid, aus, sigma=sigma).flatten(2)


class ExpressionGeometry(nn.Module):
    """A face's expression geometry from its landmarks: its shape in the face frame
    (``aukit.face_shape``) minus the canonical face, in ``1 / SHAPE_SCALE`` inter-ocular
    distances, through one linear map ``[B, 68, 2] -> [B, 68, 2]``.

    The shape mixes who the person is with the expression. Stage 1's geometry loss
    (``aukit.losses.geometry``) trains the map to return the shape minus the person's mean shape:
    learned on many unlabeled people it removes the person, which a few labelled people cannot
    teach.
    """

    def __init__(self):
        super().__init__()
        self.project = nn.Linear(2 * NUM_LANDMARKS, 2 * NUM_LANDMARKS)

    def inputs(self, landmarks: Tensor) -> Tensor:
        """landmarks [B, 68, 2] (pixels) -> the map's input [B, 136]: the face-frame shape minus
        the canonical face, scaled."""
        shape = normalise_shape(landmarks) - canonical_shape().to(landmarks)
        return SHAPE_SCALE * shape.flatten(1)

    def forward(self, landmarks: Tensor) -> Tensor:
        """landmarks [B, 68, 2] (pixels) -> [B, 68, 2] (scaled face frame)."""
        return self.project(self.inputs(landmarks)).view_as(landmarks)

    @torch.no_grad()
    def set_map(self, weight: Tensor, bias: Tensor) -> None:
        """Sets the map to ``x -> weight @ x + bias`` (weight [136, 136], bias [136]; e.g. stage
        1's least-squares solution, ``aukit.losses.geometry.LeastSquaresFit``)."""
        self.project.weight.copy_(weight)
        self.project.bias.copy_(bias)


class PerAUHead(nn.Module):
    """One linear classifier per AU: AU features [B, A, E] -> logits [B, A]."""

    def __init__(self, num_aus: int, dim: int, dropout: float = 0.0):
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.weight = nn.Parameter(torch.randn(num_aus, dim) * dim ** -0.5)
        self.bias = nn.Parameter(torch.zeros(num_aus))

    def forward(self, features: Tensor) -> Tensor:
        return (self.dropout(features) * self.weight).sum(-1) + self.bias


class Mlp(nn.Sequential):
    """Two-layer GELU MLP ``dim -> hidden -> out``."""

    def __init__(self, dim: int, hidden: int, out: int | None = None, dropout: float = 0.0):
        super().__init__(nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(dropout),
                         nn.Linear(hidden, out or dim))


class RegionBlock(nn.Module):
    """Pre-norm cross-attention of AU queries over tokens, with an additive per-AU bias, + MLP."""

    def __init__(self, dim: int, num_heads: int, dropout: float = 0.0):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"embed_dim {dim} must be divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.norm_q, self.norm_kv, self.norm_mlp = (nn.LayerNorm(dim) for _ in range(3))
        self.q, self.out = nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.mlp = Mlp(dim, 4 * dim, dropout=dropout)

    def forward(self, queries: Tensor, tokens: Tensor, bias: Tensor | None) -> Tensor:
        """queries [B, A, E], tokens [B, N, E], bias [B, A, N] (added to logits) -> [B, A, E]."""
        b, a, e = queries.shape
        h = self.num_heads
        q = self.q(self.norm_q(queries)).view(b, a, h, e // h).transpose(1, 2)  # [B, h, A, E/h]
        k, v = self.kv(self.norm_kv(tokens)).view(b, -1, 2, h, e // h).permute(2, 0, 3, 1, 4)
        # explicit softmax, not F.scaled_dot_product_attention: A x N is tiny, and with a mask
        # SDPA's cuDNN backward returns NaN for key lengths of 64 mod 128 (pytorch#196678)
        logits = q @ k.transpose(-2, -1) * (e // h) ** -0.5  # [B, h, A, N]
        if bias is not None:
            logits = logits + bias.unsqueeze(1)
        attended = logits.softmax(-1).to(v.dtype) @ v  # [B, h, A, E/h]
        queries = queries + self.out(attended.transpose(1, 2).reshape(b, a, e))
        return queries + self.mlp(self.norm_mlp(queries))


def roi_tokens(x: Tensor, weights: Tensor, size: int, extent: float) -> Tensor:
    """A ``size x size`` window of tokens around each AU's centre, bilinearly sampled.

    Args:
        x: ``[B, N, E]`` tokens of a square ``sqrt(N) x sqrt(N)`` grid (row-major).
        weights: ``[B, A, N]`` AU attention maps normalised to sum 1; each window is centred on
            its map's centroid.
        size: samples per side.
        extent: the window's side as a fraction of the image side.

    Returns:
        ``[B, A, size * size * E]``: the window's tokens in order (rows, then columns), so the
        region keeps its spatial layout (where in the region a cue is), which averaging over
        the map loses. Samples beyond the grid take the border tokens.
    """
    n, e = int(x.shape[1]), int(x.shape[2])  # ints under torch.jit.trace; the batch stays free
    a, side = int(weights.shape[1]), math.isqrt(n)
    if side * side != n:
        raise ValueError(f"ROI pooling needs a square token grid, got {n} tokens")
    cells = torch.arange(side, device=x.device, dtype=x.dtype)
    cx, cy = weights @ cells.repeat(side), weights @ cells.repeat_interleave(side)  # [B, A]
    offsets = torch.linspace(-extent / 2, extent / 2, size, device=x.device,
                             dtype=x.dtype) * side  # in tokens
    px = (cx[..., None] + offsets).clamp(0, side - 1)  # [B, A, s] sample columns
    py = (cy[..., None] + offsets).clamp(0, side - 1)  # [B, A, s] sample rows
    # bilinear weights as tent functions over the grid: [B, A, s, side] per axis
    wx = (1 - (px[..., None] - cells).abs()).clamp_min(0)
    wy = (1 - (py[..., None] - cells).abs()).clamp_min(0)
    sample = (wy[:, :, :, None, :, None] * wx[:, :, None, :, None, :])  # [B, A, s, s, side, side]
    return (sample.reshape(-1, a * size * size, n) @ x).reshape(-1, a, size * size * e)


class AURegionEncoder(nn.Module):
    """Per-AU region features from backbone tokens and AU attention maps.

    Each AU's map pools the tokens into a region summary (``roi_size`` 0: the map-weighted mean
    of the tokens; ``k > 0``: a ``k x k`` window of tokens around the map's centre, ``roi_extent``
    of the image wide, flattened in order and projected, so the summary keeps where in the region
    each cue lies); a learnable AU query added to it then cross-attends to all tokens with the
    logits biased by ``log(map)``, so the feature looks mostly inside its region while still
    seeing long-range context. ``geometry`` adds to each AU's query an embedding of the face's
    expression geometry (``ExpressionGeometry`` of the landmarks), which the windows, centred on
    the landmarks, otherwise hide.
    """

    def __init__(self, in_dim: int, embed_dim: int, num_aus: int, num_heads: int = 4,
                 depth: int = 1, attention_bias: bool = True, dropout: float = 0.0,
                 roi_size: int = 0, roi_extent: float = 0.3, geometry: bool = False):
        super().__init__()
        if roi_size < 0 or not 0 < roi_extent <= 2:
            raise ValueError(f"need roi_size >= 0 and 0 < roi_extent <= 2, got {roi_size} and "
                             f"{roi_extent}")
        self.token_proj = nn.Sequential(nn.LayerNorm(in_dim), nn.Linear(in_dim, embed_dim))
        self.roi_size, self.roi_extent = roi_size, roi_extent
        self.roi_proj = nn.Linear(roi_size * roi_size * embed_dim, embed_dim) if roi_size else None
        self.au_queries = nn.Parameter(torch.randn(num_aus, embed_dim) * 0.02)
        self.geometry = ExpressionGeometry() if geometry else None
        # one [68 * 2, E] embedding per AU (rows follow the AUs, like the queries)
        self.geometry_embed = nn.Parameter(
            torch.randn(num_aus, 2 * NUM_LANDMARKS, embed_dim) * (2 * NUM_LANDMARKS) ** -0.5) \
            if geometry else None
        self.blocks = nn.ModuleList(RegionBlock(embed_dim, num_heads, dropout)
                                    for _ in range(depth))
        self.norm = nn.LayerNorm(embed_dim)
        self.attention_bias = attention_bias

    def no_weight_decay(self) -> set[str]:
        """The learned AU queries are embeddings, not weights: no weight decay
        (``aukit.optim``)."""
        return {"au_queries"}

    def project_tokens(self, tokens: Tensor) -> Tensor:
        """Backbone tokens [B, N, D] -> [B, N, E] in the region feature space."""
        return self.token_proj(tokens)

    def forward(self, tokens: Tensor, maps: Tensor, landmarks: Tensor | None = None) -> Tensor:
        """tokens [B, N, D], maps [B, A, N] in [0, 1], landmarks [B, 68, 2] (pixels; needed
        with ``geometry``) -> AU features [B, A, E]."""
        x = self.project_tokens(tokens)
        weights = maps / maps.sum(-1, keepdim=True).clamp_min(1e-6)
        summary = weights @ x if self.roi_proj is None else \
            self.roi_proj(roi_tokens(x, weights, self.roi_size, self.roi_extent))
        queries = summary + self.au_queries  # [B, A, E]
        if self.geometry is not None:
            if landmarks is None:
                raise ValueError("the region encoder's geometry branch reads the landmarks: "
                                 "pass them, or build it with geometry=False")
            shape = self.geometry(landmarks).flatten(1)  # [B, 136]
            queries = queries + torch.einsum("bk,ake->bae", shape, self.geometry_embed)
        bias = maps.clamp_min(MIN_ATTENTION).log() if self.attention_bias else None
        for block in self.blocks:
            queries = block(queries, x, bias)
        return self.norm(queries)
