"""Stage 1: self-supervised AU region and relation learning as a LightningModule."""

from __future__ import annotations

from torch import Tensor

from aukit.au import au_numbers
from aukit.cli import UserError
from aukit.losses.stage1 import Stage1Losses, Stage1Objective
from aukit.models.encoder import AUEncoder
from aukit.optim import Optimisation
from aukit.stage import StageModule
from aukit.utils.settings import plain, settings

DEFAULT_LOSSES, DEFAULT_OPTIM = Stage1Losses(), Optimisation()


class RegionRelationPretrainer(StageModule):
    """An ``AUEncoder`` (Swin -> AU attention pooling -> region transformer) trained by
    ``Stage1Objective``; its checkpoint's ``encoder`` is what stage 2 loads.

    The objective's losses on two augmented views (``losses``: region, relation, masked pixels,
    expression geometry; each ``*_weight``, 0 = off; ``aukit.losses.stage1.Stage1Losses``),
    optimised as ``optim`` says (``aukit.optim.Optimisation``).
    ``geometry`` gives the region encoder its expression-geometry branch, which
    ``geometry_weight`` trains (its linear map is solved in closed form, not stepped by the
    optimiser).
    """

    stage = "pretrain"

    def __init__(self, aus: list[str] | str = "all", backbone: str = "swin_test",
                 image_size: int = 128, pretrained_backbone: bool = False, feature_stage: int = 3,
                 conv_stem: bool | None = None, embed_dim: int = 128,
                 num_heads: int = 4, region_depth: int = 1, attention_sigma: float = 0.3,
                 roi_size: int = 0, roi_extent: float = 0.3, geometry: bool = False,
                 losses: Stage1Losses = DEFAULT_LOSSES, optim: Optimisation = DEFAULT_OPTIM):
        super().__init__()
        self.losses, self.optim = settings(Stage1Losses, losses), settings(Optimisation, optim)
        losses, optim = plain(self.losses), plain(self.optim)  # checkpoints keep plain data
        self.save_hyperparameters()
        self.au_numbers = au_numbers(aus)
        # no dropout: the contrastive views differ by their augmentations only
        self.encoder = AUEncoder(self.au_numbers, backbone, image_size, pretrained_backbone,
                                 feature_stage, conv_stem, embed_dim, num_heads, region_depth,
                                 attention_sigma, dropout=0.0, roi_size=roi_size,
                                 roi_extent=roi_extent, geometry=geometry)
        self.objective = Stage1Objective(len(self.au_numbers), self.encoder.token_dim, embed_dim,
                                         self.encoder.grid, image_size, self.losses)
        if not self.objective.reads_au_features:  # no loss trains the region encoder's
            for name, param in self.encoder.region.named_parameters():  # features: keep it
                if not name.startswith("geometry."):  # as built
                    param.requires_grad_(False)
        self.objective.take_geometry_map(self.encoder.geometry)

    def setup(self, stage: str) -> None:
        """Refuses, before any step, a pool whose faces carry no person id where a loss on
        needs them (``person_ids_problem`` of the data module says why they do not)."""
        datamodule = getattr(self.trainer, "datamodule", None)
        needs = self.objective.person_id_losses
        if needs and hasattr(datamodule, "person_ids_problem"):
            problem = datamodule.person_ids_problem()
            if problem:
                raise UserError(f"{' and '.join(needs)} need{'s' * (len(needs) == 1)} each "
                                f"face's person id, but {problem}")

    def encode(self, images: Tensor, landmarks: Tensor) -> Tensor:
        """images [B, 3, H, W], landmarks [B, 68, 2] -> AU region features [B, A, E]."""
        return self.encoder.features(images, landmarks)[1]

    def forward(self, images: Tensor, landmarks: Tensor) -> dict[str, Tensor]:
        """images [B, 3, H, W], landmarks [B, 68, 2] -> the objective's heads
        (``Stage1Objective.heads``: ``z`` [B, A, P] unit AU embeddings, ...)."""
        return self.objective.heads(*self.encoder.features(images, landmarks))

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        images = batch["image"]  # [B, V, 3, H, W], landmarks [B, V, 68, 2]
        losses = self.objective(self.encoder.features, images, batch["landmarks"],
                                batch.get("subject"), self.encoder.geometry)
        loss = losses.pop("loss")
        self.log_dict({f"train/{k}_loss": val for k, val in losses.items()},
                      batch_size=len(images))
        self.log("train/loss", loss, prog_bar=True, batch_size=len(images))
        return loss

    def configure_optimizers(self):
        return self.adamw_warmup_cosine(self, self.optim, layered="encoder.backbone.model")

    def checkpoint_meta(self) -> dict:
        return {"encoder": dict(self.encoder.config), "aus": list(self.au_numbers)}
