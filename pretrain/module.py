"""Stage 1: self-supervised AU region and relation learning as a LightningModule."""

from __future__ import annotations

from torch import Tensor

from aukit.au import au_numbers
from aukit.cli import UserError
from aukit.losses.stage1 import Stage1Losses, Stage1Objective
from aukit.models.encoder import AUEncoder, EncoderSettings
from aukit.optim import Optimisation
from aukit.stage import StageModule
from aukit.utils.settings import plain, settings

# no dropout: the contrastive views differ by their augmentations only
DEFAULT_ENCODER = EncoderSettings(dropout=0.0)
DEFAULT_LOSSES, DEFAULT_OPTIM = Stage1Losses(), Optimisation()


class RegionRelationPretrainer(StageModule):
    """An ``AUEncoder`` (Swin -> AU attention pooling -> region transformer) trained by
    ``Stage1Objective``; its checkpoint's ``encoder`` is what stage 2 loads.

    The objective's losses on two augmented views (``losses``: region, relation, masked pixels,
    image expression, expression geometry; each ``*_weight``, 0 = off;
    ``aukit.losses.stage1.Stage1Losses``),
    optimised as ``optim`` says (``aukit.optim.Optimisation``).
    ``encoder`` (``aukit.models.encoder.EncoderSettings``) builds the encoder; its ``geometry``
    gives the region encoder the expression-geometry branch, which ``losses.geometry_weight``
    trains (its linear map is solved in closed form, not stepped by the optimiser).
    """

    stage = "pretrain"

    def __init__(self, aus: list[str] | str = "all", image_size: int = 128,
                 encoder: EncoderSettings = DEFAULT_ENCODER,
                 losses: Stage1Losses = DEFAULT_LOSSES, optim: Optimisation = DEFAULT_OPTIM):
        super().__init__()
        self.losses = settings(Stage1Losses, losses)
        self.optim = settings(Optimisation, optim, DEFAULT_OPTIM)
        encoder_settings = settings(EncoderSettings, encoder, DEFAULT_ENCODER)
        # checkpoints keep plain data
        encoder, losses, optim = plain(encoder_settings), plain(self.losses), plain(self.optim)
        self.save_hyperparameters()
        self.au_numbers = au_numbers(aus)
        self.encoder = AUEncoder(self.au_numbers, **encoder_settings.config(image_size))
        embed_dim = self.encoder.embed_dim
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
