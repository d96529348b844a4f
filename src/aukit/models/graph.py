"""AU-aware dynamic graph: per-sample AU relations from feature similarity, optionally mixed
with a label co-occurrence prior, propagated by residual graph layers."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def row_normalise(prior: Tensor) -> Tensor:
    """[A, A] non-negative weights -> rows summing to 1; an all-zero row becomes a self-loop."""
    if prior.dim() != 2 or prior.shape[0] != prior.shape[1]:
        raise ValueError(f"the co-occurrence prior must be a square [A, A] matrix, got "
                         f"{tuple(prior.shape)}")
    if not torch.isfinite(prior).all() or (prior < 0).any():
        raise ValueError("the co-occurrence prior must be finite and non-negative "
                         "(e.g. P(AU j | AU i) counted on the training labels)")
    prior = prior.float()
    empty = prior.sum(dim=1, keepdim=True) == 0
    # an AU never seen active has no co-occurrence evidence: let it keep only itself
    prior = torch.where(empty, torch.eye(len(prior), dtype=prior.dtype), prior)
    return prior / prior.sum(dim=1, keepdim=True)


class _GraphLayer(nn.Module):
    """h <- h + MLP(LN(adj @ W h)): one residual message-passing step."""

    def __init__(self, dim: int, dropout: float) -> None:
        super().__init__()
        self.message = nn.Linear(dim, dim, bias=False)
        self.norm = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Dropout(dropout),
                                 nn.Linear(2 * dim, dim))

    def forward(self, h: Tensor, adj: Tensor) -> Tensor:
        """h [B, A, E], adj [B, A, A] -> [B, A, E]."""
        return h + self.mlp(self.norm(adj @ self.message(h)))


class AUDynamicGraph(nn.Module):
    """Residual graph layers over the A AU features with a per-sample adjacency.

    The adjacency is a temperature softmax over the cosine similarity of projected node
    features, optionally restricted to each node's ``top_k`` most similar neighbours (itself
    always kept), then mixed with the row-normalised co-occurrence ``prior``:
    ``adj = (1 - prior_weight) * dynamic + prior_weight * prior``. Every row sums to 1.
    """

    def __init__(self, dim: int, num_aus: int, layers: int = 2, top_k: int | None = 4,
                 temperature: float = 0.1, prior: Tensor | None = None,
                 prior_weight: float = 0.3, dropout: float = 0.0) -> None:
        super().__init__()
        if top_k is not None and top_k < 1:
            raise ValueError(f"top_k must be >= 1 or None (dense graph), got {top_k}")
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        if not 0.0 <= prior_weight <= 1.0:
            raise ValueError(f"prior_weight must lie in [0, 1], got {prior_weight}")
        if layers < 1:
            raise ValueError(f"layers must be >= 1, got {layers}")
        self.num_aus = num_aus
        self.top_k = top_k
        self.temperature = temperature
        self.prior_weight = prior_weight
        if prior is not None:
            if prior.shape != (num_aus, num_aus):
                raise ValueError(f"the co-occurrence prior is {tuple(prior.shape)} but the graph "
                                 f"has {num_aus} AUs; pass an [{num_aus}, {num_aus}] matrix")
            prior = row_normalise(prior)
        self.register_buffer("prior", prior)
        self.similarity = nn.Linear(dim, dim, bias=False)
        self.layers = nn.ModuleList(_GraphLayer(dim, dropout) for _ in range(layers))

    def set_prior(self, prior: Tensor) -> None:
        """Replace the co-occurrence prior [A, A] (the graph must have been built with one)."""
        if self.prior is None:
            raise ValueError("this graph was built without a co-occurrence prior; pass one "
                             "(e.g. torch.eye(num_aus)) to the constructor to reserve it")
        if prior.shape != self.prior.shape:
            raise ValueError(f"the co-occurrence prior is {tuple(prior.shape)} but the graph "
                             f"has {self.num_aus} AUs")
        self.prior.copy_(row_normalise(prior.cpu()).to(self.prior))

    def adjacency(self, x: Tensor) -> Tensor:
        """x [B, A, E] -> row-stochastic adjacency [B, A, A]."""
        z = F.normalize(self.similarity(x), dim=-1)
        logits = z @ z.transpose(1, 2) / self.temperature  # [B, A, A]
        if self.top_k is not None and self.top_k < x.shape[1]:
            # float and out of place: export (jit.trace, ONNX, onnxruntime) lacks the bool ops
            top = logits.topk(self.top_k, dim=-1).indices  # [B, A, k]
            eye = torch.eye(x.shape[1], dtype=logits.dtype, device=x.device)
            keep = (torch.zeros_like(logits).scatter(-1, top, 1.0) + eye) > 0
            logits = logits.masked_fill(~keep, float("-inf"))
        adj = logits.softmax(dim=-1)
        if self.prior is None:
            return adj
        return (1 - self.prior_weight) * adj + self.prior_weight * self.prior.to(adj.dtype)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """x [B, A, E] -> (y [B, A, E], adjacency [B, A, A])."""
        if x.dim() != 3 or x.shape[1] != self.num_aus:
            raise ValueError(f"expected AU features [B, {self.num_aus}, E], got {tuple(x.shape)}")
        adj = self.adjacency(x)
        h = x
        for layer in self.layers:
            h = layer(h, adj)
        return h, adj
