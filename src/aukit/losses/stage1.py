"""The stage-1 objective: its heads and weighted losses over an encoder's outputs.

Pretraining optimises it (``pretrain.module``): the losses are pure functions
(``aukit.losses``); this module owns the heads they read and weighs them.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from aukit.au import NUM_LANDMARKS
from aukit.losses.geometry import LeastSquaresFit, expression_geometry, geometry_loss
from aukit.losses.masked_pixels import block_mask, masked_pixel_loss
from aukit.losses.region_contrastive import region_contrastive_loss
from aukit.losses.relation_ot import RELATIONS, relation_ot_loss
from aukit.models.region import SHAPE_SCALE, ExpressionGeometry, Mlp

# which faces of a batch are the contrastive losses' negatives: every other face, or only the
# same person's other faces (identity cannot tell those apart)
NEGATIVES = ("batch", "person")


@dataclass(frozen=True)
class Stage1Losses:
    """The stage-1 losses and their settings (``--model.losses.*``); a weight of 0 switches a
    loss off, so an ablation is a config change.

    Args:
        region_weight: the region loss: per-AU InfoNCE between two views of each face.
        relation_weight: the relation loss: InfoNCE over faces on a transport distance
            between the two views' AU embedding sets.
        masked_weight: masked-pixel prediction (the first view's hidden squares).
        geometry_weight: expression geometry (needs the encoder's geometry branch and person
            ids): the branch learns each face's landmarks minus its person's mean shape.
        expression_weight: image expression (needs person ids): a linear head on each AU
            feature predicts that same target, each face's landmarks minus its person's mean
            shape, so the image features learn the expression and drop the person.
        proj_dim: size of the per-AU projections the contrastive losses compare.
        temperature: the region loss's softmax temperature.
        negatives: the contrastive losses' negatives: "batch" (every other face) or "person"
            (only the same person's other faces; needs person ids).
        relation: "fgw" (fused Gromov-Wasserstein: how each face's AUs relate to each other
            as well as the AUs) or "ot" (version 1: entropic OT, AU saliency marginals).
        fgw_alpha: FGW's weight of the AU-relation term.
        gw_iters: FGW's linearisations.
        ot_temperature: the relation loss's softmax temperature.
        ot_epsilon: entropic regularisation of the transport.
        ot_iters: Sinkhorn iterations.
        identity_prior: "ot" only: the pull of each AU towards the same AU.
        ot_solver: "ot" only: "torch", "pot" or "pot_loop".
        mask_ratio: the share of the view's squares the masked-pixel loss hides.
        mask_block: those squares' side, in pixels.
    """

    region_weight: float = 1.0
    relation_weight: float = 1.0
    masked_weight: float = 0.0
    geometry_weight: float = 0.0
    expression_weight: float = 0.0
    proj_dim: int = 64
    temperature: float = 0.1
    negatives: str = "batch"
    relation: str = "fgw"
    fgw_alpha: float = 0.5
    gw_iters: int = 5
    ot_temperature: float = 0.1
    ot_epsilon: float = 0.05
    ot_iters: int = 30
    identity_prior: float = 0.5
    ot_solver: str = "torch"
    mask_ratio: float = 0.5
    mask_block: int = 16


# an encoder: images [B, 3, H, W], landmarks [B, 68, 2] -> tokens [B, N, D], AU features [B, A, E]
Encoder = Callable[[Tensor, Tensor], tuple[Tensor, Tensor]]


class Stage1Objective(nn.Module):
    """Per-AU projections and the stage-1 losses on two views of each face.

    Losses: per-AU InfoNCE (region), InfoNCE over images on a transport distance between the
    views' AU embedding sets (relation: ``relation="fgw"``, fused Gromov-Wasserstein that
    compares how each face's AUs relate to each other, weight ``fgw_alpha``; ``"ot"``, version
    1's entropic OT with AU-saliency marginals and an identity prior), optionally masked-pixel
    prediction (``masked_weight``:
    ``mask_ratio`` of the first view's ``mask_block``-pixel squares are hidden before the
    encoder, and a linear decoder on the tokens predicts their patch-standardised pixels; the
    contrastive losses then compare the hidden view with the whole second view), and optionally
    expression geometry (``geometry_weight``: the encoder's geometry branch, ``geometry``, learns
    each face's landmarks minus its person's mean shape in the batch, ``aukit.losses.geometry``;
    needs person ids, ``groups``; the branch's linear map is not optimised: in training it is
    set to the loss's exact least-squares minimiser over every batch so far,
    ``LeastSquaresFit``), and optionally image expression (``expression_weight``: a linear head
    per AU on the AU features predicts that same target from the image; needs ``groups``, and no
    geometry branch, which would hand the features the shape). A loss with weight 0 is off, so
    ablations are config changes.
    ``negatives``: the contrastive losses' negatives, every other face of the batch
    (``"batch"``) or only the same person's other faces (``"person"``: needs ``groups``, and
    batches of several faces per person), so that identity earns nothing.

    ``num_aus``, ``token_dim``, ``embed_dim``: the encoder's AU count, token and AU feature
    sizes; ``grid``: its token grid at ``image_size`` pixels; ``losses``: ``Stage1Losses``.
    """

    def __init__(self, num_aus: int, token_dim: int, embed_dim: int, grid: tuple[int, int],
                 image_size: int, losses: Stage1Losses | None = None):
        super().__init__()
        losses = losses or Stage1Losses()
        if losses.negatives not in NEGATIVES:
            raise ValueError(f"negatives must be one of {NEGATIVES} (--model.losses.negatives), "
                             f"got {losses.negatives!r}")
        self.negatives = losses.negatives
        self.weights = {"region": losses.region_weight, "relation": losses.relation_weight,
                        "masked": losses.masked_weight, "geometry": losses.geometry_weight,
                        "expression": losses.expression_weight}
        if max(w for k, w in self.weights.items() if k != "geometry") <= 0:
            raise ValueError("no stage-1 loss trains the encoder: set "
                             "--model.losses.region_weight, --model.losses.relation_weight, "
                             "--model.losses.masked_weight or --model.losses.expression_weight "
                             "> 0 (the geometry map, "
                             "--model.losses.geometry_weight, is solved in closed form, not "
                             "optimised)")
        # the least-squares statistics of the geometry map, which is solved, not trained
        self.geometry_fit = LeastSquaresFit(2 * NUM_LANDMARKS, 2 * NUM_LANDMARKS) \
            if losses.geometry_weight > 0 else None
        if losses.relation not in RELATIONS:
            raise ValueError(f"relation must be one of {RELATIONS} (--model.losses.relation), "
                             f"got {losses.relation!r}")
        self.temperature = losses.temperature
        self.relation_args = dict(temperature=losses.ot_temperature, epsilon=losses.ot_epsilon,
                                  iters=losses.ot_iters, formulation=losses.relation,
                                  alpha=losses.fgw_alpha, gw_iters=losses.gw_iters,
                                  identity_prior=losses.identity_prior, solver=losses.ot_solver)
        self.mask_args = (losses.mask_block, losses.mask_ratio)
        # per-AU projection heads, stored as one [A, E, P] weight (for the losses that read them)
        self.projector = self.au_proj = None
        if self.reads_au_features:
            self.projector = Mlp(embed_dim, 2 * embed_dim, embed_dim)
            self.au_proj = nn.Parameter(torch.randn(num_aus, embed_dim, losses.proj_dim)
                                        * embed_dim ** -0.5)
        # per-AU linear heads AU feature -> the face's expression geometry [136]
        self.expression_head = nn.Parameter(torch.zeros(num_aus, embed_dim, 2 * NUM_LANDMARKS)) \
            if losses.expression_weight > 0 else None
        # AU saliency logits -> OT marginals; FGW transports uniform marginals
        self.au_mass = nn.Linear(embed_dim, 1) if losses.relation == "ot" else None
        self.grid = grid
        self.pixel_stride = image_size // grid[0]  # pixels per token side
        self.pixel_decoder = nn.Linear(token_dim, 3 * self.pixel_stride ** 2) \
            if losses.masked_weight > 0 else None
        if losses.masked_weight > 0:
            block_mask(1, (image_size, image_size), *self.mask_args)  # checks the flags

    @property
    def reads_au_features(self) -> bool:
        """Whether a loss reads the encoder's AU features (region, relation, expression);
        else only its tokens and geometry branch train."""
        return any(self.weights[k] > 0 for k in ("region", "relation", "expression"))

    def take_geometry_map(self, geometry: ExpressionGeometry | None) -> None:
        """Takes the encoder's geometry map off the optimiser when this objective solves it
        (the geometry loss is on); call it before the optimiser is built."""
        if self.geometry_fit is not None and geometry is not None:
            geometry.requires_grad_(False)

    @property
    def person_id_losses(self) -> list[str]:
        """The losses that are on and compare a person's faces, each with its off switch."""
        return [name for name, on in [
            ("the geometry loss (off: --model.losses.geometry_weight 0)",
             self.weights["geometry"] > 0),
            ("the expression loss (off: --model.losses.expression_weight 0)",
             self.weights["expression"] > 0),
            ("same-person negatives (off: --model.losses.negatives batch)",
             self.negatives == "person" and self.contrastive)] if on]

    @property
    def contrastive(self) -> bool:
        """Whether a loss compares two views (else one masked view is enough)."""
        return any(self.weights[k] > 0 for k in ("region", "relation"))

    def heads(self, tokens: Tensor, features: Tensor) -> dict[str, Tensor]:
        """tokens [B, N, D], AU features [B, A, E] -> ``z`` [B, A, P] unit AU embeddings (region
        or relation loss on), ``mass`` [B, A] (relation "ot"), ``pixels`` [B, 3, H, W]
        (masked-pixel loss on) and ``expression`` [B, A, 136] (expression loss on), or absent."""
        out = {}
        if self.projector is not None:
            hidden = features + self.projector(features)
            out["z"] = F.normalize(torch.einsum("bae,aep->bap", hidden, self.au_proj), dim=-1)
        if self.au_mass is not None:
            out["mass"] = self.au_mass(features).squeeze(-1)
        if self.expression_head is not None:
            out["expression"] = torch.einsum("bae,aek->bak", features, self.expression_head)
        if self.pixel_decoder is not None:
            patches = self.pixel_decoder(tokens).transpose(1, 2)  # [B, 3 * s * s, N]
            out["pixels"] = F.pixel_shuffle(patches.unflatten(-1, self.grid), self.pixel_stride)
        return out

    def forward(self, encode: Encoder, images: Tensor, landmarks: Tensor,
                groups: Sequence[Hashable] | None = None,
                geometry: ExpressionGeometry | None = None) -> dict[str, Tensor]:
        """images [B, V, 3, H, W] (normalised; [B, 3, H, W]: one view), landmarks
        [B, V, 68, 2] (or [B, 68, 2]) -> each loss that is on and ``loss``, their weighted sum.
        ``groups``: the B faces' person ids and ``geometry`` the
        encoder's geometry branch (``ExpressionGeometry``; the geometry loss). The
        contrastive losses need V >= 2."""
        if images.ndim == 4:
            images, landmarks = images[:, None], landmarks[:, None]
        if images.ndim != 5 or (self.contrastive and images.shape[1] < 2):
            raise ValueError("the stage-1 losses need two views per image (image batch of "
                             f"shape {tuple(images.shape)}); set data.views: 2")
        if not self.contrastive:  # masked pixels or geometry alone read the first view only
            images, landmarks = images[:, :1], landmarks[:, :1]
        if self.weights["geometry"] > 0 and geometry is None:
            raise ValueError("the geometry loss (geometry_weight > 0) trains the region "
                             "encoder's geometry branch: set --model.encoder.geometry true")
        if self.weights["expression"] > 0 and geometry is not None:
            raise ValueError("the expression loss teaches the image features a face's expression "
                             "geometry, which the encoder's geometry branch would hand them "
                             "from the landmarks: set --model.encoder.geometry false (and "
                             "--model.losses.geometry_weight 0) or --model.losses."
                             "expression_weight 0")
        for name in ("geometry", "expression"):
            if self.weights[name] > 0 and groups is None:
                raise ValueError(f"the {name} loss ({name}_weight > 0) needs each face's person "
                                 "id: use a data source with subject ids (SynthAU, a folder with "
                                 "one sub-folder per subject or a subjects.csv, a manifest), or "
                                 f"switch it off with --model.losses.{name}_weight 0")
        person_ids = None
        if self.negatives == "person" and self.contrastive:
            if groups is None:
                raise ValueError("same-person negatives (--model.losses.negatives person) need "
                                 "each face's person id: use a data source with subject ids, "
                                 "or --model.losses.negatives batch")
            index = {g: i for i, g in enumerate(dict.fromkeys(groups))}
            person_ids = torch.tensor([index[g] for g in groups], device=images.device)
        b, v = images.shape[:2]
        masked = self.weights["masked"] > 0
        if masked:
            clean = images[:, 0]
            mask = block_mask(b, clean.shape[-2:], *self.mask_args, images.device)
            images = torch.cat([clean.masked_fill(mask[:, None], 0.0)[:, None], images[:, 1:]], 1)
        out = self.heads(*encode(images.flatten(0, 1), landmarks.flatten(0, 1)))
        out = {k: t.unflatten(0, (b, v)) for k, t in out.items()}  # [B, V, ...]
        losses = {}
        if self.weights["region"] > 0:
            losses["region"] = region_contrastive_loss(out["z"][:, 0], out["z"][:, 1],
                                                       self.temperature, groups=person_ids)
        if self.weights["relation"] > 0:
            mass = out.get("mass")
            losses["relation"] = relation_ot_loss(
                out["z"][:, 0], out["z"][:, 1], *((mass[:, 0], mass[:, 1]) if mass is not None
                                                  else (None, None)),
                **self.relation_args, groups=person_ids)
        if masked:
            losses["masked"] = masked_pixel_loss(out["pixels"][:, 0], clean, mask,
                                                 self.pixel_stride)
        if self.weights["geometry"] > 0 or self.weights["expression"] > 0:
            points = landmarks.flatten(0, 1)
            target = expression_geometry(points, [g for g in groups for _ in range(v)])
            target = SHAPE_SCALE * target.flatten(1)  # [B * V, 136]
        if self.weights["expression"] > 0:
            predicted = out["expression"].flatten(0, 1)  # [B * V, A, 136]
            losses["expression"] = geometry_loss(predicted, target[:, None].expand_as(predicted))
        if self.weights["geometry"] > 0:
            inputs = geometry.inputs(points)  # [B * V, 136]
            # scored before this batch joins the least-squares fit: a held-out figure
            losses["geometry"] = geometry_loss(geometry.project(inputs), target)
            if self.geometry_fit is not None and self.training:
                self.geometry_fit.update(inputs, target)
                geometry.set_map(*self.geometry_fit.solve())
        losses["loss"] = sum(self.weights[name] * value for name, value in losses.items())
        return losses
