"""Stage 1: self-supervised AU region and relation learning as a LightningModule."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from aukit.au import au_numbers
from aukit.losses.masked_pixels import block_mask, masked_pixel_loss
from aukit.losses.region_contrastive import (
    global_contrastive_loss,
    other_subject_bias,
    region_contrastive_loss,
)
from aukit.losses.relation_ot import RELATIONS, relation_ot_loss
from aukit.models.backbone import SwinBackbone
from aukit.models.region import AURegionEncoder, Mlp, landmark_maps
from aukit.optim import parameter_groups
from aukit.stage import StageModule
from aukit.utils.distributed import world_size


class RegionRelationPretrainer(StageModule):
    """Swin -> AU attention pooling -> region transformer -> per-AU projections.

    Losses on two augmented views: per-AU InfoNCE (region), InfoNCE over images on a transport
    distance between the views' AU embedding sets (relation: ``relation="fgw"``, fused
    Gromov-Wasserstein that compares how each face's AUs relate to each other, weight
    ``fgw_alpha``; ``"ot"``, version 1's entropic OT with AU-saliency marginals and an identity
    prior), optionally a global InfoNCE, and optionally masked-pixel prediction (``masked_weight``:
    ``mask_ratio`` of the first view's ``mask_block``-pixel squares are hidden before the
    encoder, and a linear decoder on the backbone tokens predicts their patch-standardised
    pixels; the contrastive losses then compare the hidden view with the whole second view). A
    loss with weight 0 is switched off, so ablations are config changes.
    ``other_subject_weight`` weights the negatives of other subjects in every loss (1 keeps
    them, 0 drops them: only the same person's other expressions are negatives; needs the
    batch's ``subject`` ids, e.g. person-aware SynthAU or folder batches).
    """

    stage = "pretrain"

    def __init__(self, aus: list[str] | str = "all", backbone: str = "swin_test",
                 image_size: int = 128, pretrained_backbone: bool = False, feature_stage: int = 3,
                 conv_stem: bool | None = None, embed_dim: int = 128, proj_dim: int = 64,
                 num_heads: int = 4,
                 region_depth: int = 1, attention_sigma: float = 0.3, roi_size: int = 0,
                 roi_extent: float = 0.3,
                 region_weight: float = 1.0, relation_weight: float = 1.0,
                 global_weight: float = 0.0, masked_weight: float = 0.0,
                 mask_ratio: float = 0.5, mask_block: int = 16, temperature: float = 0.1,
                 relation: str = "fgw", fgw_alpha: float = 0.5, gw_iters: int = 5,
                 ot_temperature: float = 0.1, ot_epsilon: float = 0.05, ot_iters: int = 30,
                 identity_prior: float = 0.5, ot_solver: str = "torch",
                 other_subject_weight: float = 1.0, lr: float = 1e-3,
                 weight_decay: float = 0.05, warmup_epochs: float = 1.0):
        super().__init__()
        self.save_hyperparameters()
        if max(region_weight, relation_weight, global_weight, masked_weight) <= 0:
            raise ValueError("all pretraining losses are switched off: set region_weight, "
                             "relation_weight, global_weight or masked_weight > 0")
        if not 0 <= other_subject_weight <= 1:
            raise ValueError("--model.other_subject_weight must be in [0, 1] (1 keeps other "
                             f"subjects' negatives, 0 drops them), got {other_subject_weight}")
        if relation not in RELATIONS:
            raise ValueError(f"relation must be one of {RELATIONS} (--model.relation), got "
                             f"{relation!r}")
        self.au_numbers = au_numbers(aus)
        self.backbone = SwinBackbone(backbone, image_size, pretrained_backbone, feature_stage,
                                     conv_stem)
        self.region = AURegionEncoder(self.backbone.out_dim, embed_dim, len(self.au_numbers),
                                      num_heads, region_depth, roi_size=roi_size,
                                      roi_extent=roi_extent)
        num_aus = len(self.au_numbers)
        # per-AU projection heads, stored as one [A, E, P] weight
        self.projector = Mlp(embed_dim, 2 * embed_dim, embed_dim)
        self.au_proj = nn.Parameter(torch.randn(num_aus, embed_dim, proj_dim) * embed_dim ** -0.5)
        # AU saliency logits -> OT marginals; FGW transports uniform marginals
        self.au_mass = nn.Linear(embed_dim, 1) if relation == "ot" else None
        self.global_proj = Mlp(self.backbone.out_dim, 2 * embed_dim, proj_dim) \
            if global_weight > 0 else None
        self.pixel_stride = image_size // self.backbone.grid[0]  # pixels per token side
        self.pixel_decoder = nn.Linear(self.backbone.out_dim, 3 * self.pixel_stride ** 2) \
            if masked_weight > 0 else None
        if masked_weight > 0:
            block_mask(1, (image_size, image_size), mask_block, mask_ratio)  # checks the flags

    def _features(self, images: Tensor, landmarks: Tensor) -> tuple[Tensor, Tensor]:
        """-> backbone tokens [B, N, D] and AU region features [B, A, E]."""
        tokens = self.backbone(images)
        maps = landmark_maps(landmarks, images, self.backbone.grid, self.au_numbers,
                             self.hparams.attention_sigma)  # [B, A, N]
        return tokens, self.region(tokens, maps)

    def encode(self, images: Tensor, landmarks: Tensor) -> Tensor:
        """images [B, 3, H, W], landmarks [B, 68, 2] -> AU region features [B, A, E]."""
        return self._features(images, landmarks)[1]

    def forward(self, images: Tensor, landmarks: Tensor) -> dict[str, Tensor]:
        """-> ``z`` [B, A, P] unit AU embeddings; ``mass`` [B, A] (relation "ot"), ``g`` [B, P]
        (global loss on) and ``pixels`` [B, 3, H, W] (masked-pixel loss on) or absent."""
        tokens, features = self._features(images, landmarks)
        hidden = features + self.projector(features)
        out = {"z": F.normalize(torch.einsum("bae,aep->bap", hidden, self.au_proj), dim=-1)}
        if self.au_mass is not None:
            out["mass"] = self.au_mass(features).squeeze(-1)
        if self.global_proj is not None:
            out["g"] = F.normalize(self.global_proj(tokens.mean(1)), dim=-1)
        if self.pixel_decoder is not None:
            patches = self.pixel_decoder(tokens).transpose(1, 2)  # [B, 3 * s * s, N]
            out["pixels"] = F.pixel_shuffle(patches.unflatten(-1, self.backbone.grid),
                                            self.pixel_stride)
        return out

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        images, landmarks = batch["image"], batch["landmarks"]  # [B, V, 3, H, W], [B, V, 68, 2]
        if images.ndim != 5 or images.shape[1] < 2:
            raise ValueError("pretraining needs at least two views per image "
                             f"(image batch of shape {tuple(images.shape)}); set data.views: 2")
        b, v = images.shape[:2]
        hp = self.hparams
        if hp.masked_weight > 0:
            clean = images[:, 0]
            mask = block_mask(b, clean.shape[-2:], hp.mask_block, hp.mask_ratio, self.device)
            images = torch.cat([clean.masked_fill(mask[:, None], 0.0)[:, None], images[:, 1:]], 1)
        out = self(images.flatten(0, 1), landmarks.flatten(0, 1))
        out = {k: t.unflatten(0, (b, v)) for k, t in out.items()}  # [B, V, ...]
        bias = self._key_bias(batch, b)
        losses = {}
        if hp.region_weight > 0:
            losses["region"] = region_contrastive_loss(out["z"][:, 0], out["z"][:, 1],
                                                       hp.temperature, key_bias=bias)
        if hp.relation_weight > 0:
            mass = out.get("mass")
            losses["relation"] = relation_ot_loss(
                out["z"][:, 0], out["z"][:, 1], *((mass[:, 0], mass[:, 1]) if mass is not None
                                                  else (None, None)),
                temperature=hp.ot_temperature, epsilon=hp.ot_epsilon, iters=hp.ot_iters,
                formulation=hp.relation, alpha=hp.fgw_alpha, gw_iters=hp.gw_iters,
                identity_prior=hp.identity_prior, solver=hp.ot_solver, key_bias=bias)
        if hp.global_weight > 0:
            losses["global"] = global_contrastive_loss(out["g"][:, 0], out["g"][:, 1],
                                                       hp.temperature, key_bias=bias)
        if hp.masked_weight > 0:
            losses["masked"] = masked_pixel_loss(out["pixels"][:, 0], clean, mask,
                                                 self.pixel_stride)
        loss = sum(getattr(hp, f"{name}_weight") * value for name, value in losses.items())
        self.log_dict({f"train/{k}_loss": val for k, val in losses.items()}, batch_size=b)
        self.log("train/loss", loss, prog_bar=True, batch_size=b)
        return loss

    def _key_bias(self, batch: dict, b: int) -> Tensor | None:
        """``other_subject_bias`` of the batch's subjects, or None with every negative kept."""
        weight = self.hparams.other_subject_weight
        if weight == 1:
            return None
        if "subject" not in batch:
            raise ValueError("--model.other_subject_weight < 1 needs subject ids in the batch; "
                             "this data source gives none (use SynthAU, or a folder with one "
                             "sub-folder per subject or a subjects.csv)")
        return other_subject_bias(batch["subject"], weight, b * world_size(), self.device)

    def configure_optimizers(self):
        hp = self.hparams
        return self.adamw_warmup_cosine(parameter_groups(self, hp.lr, hp.weight_decay))

    def checkpoint_meta(self) -> dict:
        hp = self.hparams
        return {"backbone": hp.backbone, "image_size": hp.image_size,
                "feature_stage": hp.feature_stage, "conv_stem": self.backbone.conv_stem,
                "embed_dim": hp.embed_dim, "roi_size": hp.roi_size, "roi_extent": hp.roi_extent,
                "aus": list(self.au_numbers)}
