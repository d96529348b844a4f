"""Stage 2: AU detection as a LightningModule: model, losses, optimiser and logging."""

from __future__ import annotations

from pathlib import Path

import torch
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor

from aukit.au import au_keys, au_numbers
from aukit.checkpoint import (
    META_KEY,
    adopt_stage1_settings,
    finetune_meta,
    load_stage1_encoder,
    self_contained_hparams,
)
from aukit.detection import AUDetectionModule
from aukit.losses.stage2 import FinetuneLosses, finetune_loss
from aukit.models import ARCHITECTURES, create_model, model_config
from aukit.models.encoder import EncoderSettings
from aukit.models.freeze import freeze_parts
from aukit.models.hiva import HeadSettings
from aukit.optim import Optimisation
from aukit.text.encoders import text_encoder_dim
from aukit.text.features import DescriptionBuffers, TextSettings
from aukit.utils.settings import plain, settings

# what a stage-1 checkpoint initialises: the Swin backbone and the AU region encoder, or the
# backbone alone (the region encoder then starts from scratch)
PRETRAINED_PARTS = ("backbone+region", "backbone")

# finetuning a pretrained network: a lower peak rate, and lower still in its early layers
DEFAULT_OPTIM = Optimisation(lr=5e-4, layer_decay=0.75)
# null backbone, stem and geometry adopt a stage-1 checkpoint's (else swin_test, off)
DEFAULT_ENCODER = EncoderSettings(backbone=None, geometry=None)
DEFAULT_HEADS, DEFAULT_TEXT, DEFAULT_LOSSES = HeadSettings(), TextSettings(), FinetuneLosses()


class HiVAFinetuner(AUDetectionModule):
    """Trains HiVA (or a baseline: ``linear``, Swin + one linear head; ``region``, Swin + AU
    region features + one linear head per AU) with masked BCE per AU plus a vision-text
    alignment loss, selecting checkpoints on ``val/f1_mean`` only. The model is
    ``aukit.models.create_model`` of ``model_config``, which checkpoints store with every
    weight: a checkpoint loads without its stage-1 file or ImageNet weights, which may since
    have moved. The text encoder runs once, at set-up; the module keeps only the description
    features (``descriptions``). Test reports and activation-map images are callbacks
    (``aukit.callbacks``); ``from_stage1`` builds a module with the stage-1 weights already in.

    Args:
        aus: the AUs to predict (names; the data module's, linked).
        image_size: input side in pixels (the data module's, linked).
        architecture: hiva, region or linear (``aukit.models.ARCHITECTURES``).
        encoder: the AU encoder (``aukit.models.encoder.EncoderSettings``).
        heads: HiVA's components (``aukit.models.hiva.HeadSettings``).
        pretrained: a stage-1 checkpoint whose encoder initialises the model when training
            starts (not when resuming); its whole encoder config is checked now, and a
            differing setting is refused with its flag (null encoder backbone, conv_stem and
            geometry adopt the checkpoint's).
        pretrained_parts: what the stage-1 checkpoint initialises: backbone+region, or the
            backbone alone (the region encoder then starts from scratch).
        freeze: submodules that do not train, e.g. [encoder.region.geometry] (the stage-1
            geometry map stays as stage 1 learned it on many people); a part the model has
            switched off is skipped.
        text: the descriptions and their text encoder (``aukit.text.features.TextSettings``).
        losses: the losses' switches and weights (``FinetuneLosses``).
        optim: the optimiser (``aukit.optim.Optimisation``).
    """

    stage = "finetune"

    def __init__(self, aus: list[str], image_size: int = 128, architecture: str = "hiva",
                 encoder: EncoderSettings = DEFAULT_ENCODER,
                 heads: HeadSettings = DEFAULT_HEADS, pretrained: str | None = None,
                 pretrained_parts: str = "backbone+region", freeze: list[str] | None = None,
                 text: TextSettings = DEFAULT_TEXT, losses: FinetuneLosses = DEFAULT_LOSSES,
                 optim: Optimisation = DEFAULT_OPTIM):
        super().__init__()
        self.optim = settings(Optimisation, optim, DEFAULT_OPTIM)
        self.heads, self.text = settings(HeadSettings, heads), settings(TextSettings, text)
        self.losses = settings(FinetuneLosses, losses)
        encoder_settings = settings(EncoderSettings, encoder, DEFAULT_ENCODER)
        # checkpoints keep plain data
        encoder, heads, text = plain(encoder_settings), plain(self.heads), plain(self.text)
        losses, optim = plain(self.losses), plain(self.optim)
        if architecture not in ARCHITECTURES:
            raise ValueError(f"--model.architecture must be one of {', '.join(ARCHITECTURES)}, "
                             f"got {architecture!r} (presets such as 'hiva_swin_base' are for "
                             "aukit.models.create_model)")
        if pretrained_parts not in PRETRAINED_PARTS:
            raise ValueError(f"--model.pretrained_parts must be one of {PRETRAINED_PARTS}, got "
                             f"{pretrained_parts!r}")
        self.save_hyperparameters()
        self.au_numbers = au_numbers(aus)
        self.au_names = au_keys(self.au_numbers)
        # where the weights come from, kept through checkpoints that no longer read it
        self.stage1_path = pretrained
        self._stage1_pending = bool(pretrained)  # applied once, when training starts
        if pretrained:  # refuse a stage-1 checkpoint that does not fit, before anything trains
            encoder_settings = adopt_stage1_settings(pretrained, encoder_settings, image_size,
                                                     self.au_numbers,
                                                     pretrained_parts == "backbone+region")
        encoder = encoder_settings.config(image_size)
        text_dim = {"text_dim": text_encoder_dim(self.text.encoder)} if self.heads.use_text else {}
        # every head setting, for whichever architecture takes it; the config is what
        # checkpoints store and what inference rebuilds the model from
        self.model_config = model_config(
            architecture, strict=False, au_numbers=list(self.au_numbers), encoder=encoder,
            region_head=self.losses.region_supervision > 0, **heads, **text_dim)
        self.model = create_model(self.model_config)
        self.model_config["encoder"] = {k: v for k, v in self.model.encoder.config.items()
                                        if k != "au_numbers"}  # with the stem resolved
        freeze_parts(self.model, freeze or [], self.model_config["architecture"])
        self.uses_text = bool(self.model_config.get("use_text"))
        # set at set-up; recomputed, never stored in checkpoints
        DescriptionBuffers.attach(self, "descriptions", len(self.au_numbers),
                                  self.model_config.get("text_dim", 0))
        self.register_buffer("class_weights", torch.ones(len(self.au_numbers)))
        self.register_buffer("pos_weight", torch.ones(len(self.au_numbers)))
        self.init_metrics(self.au_names)

    @classmethod
    def from_stage1(cls, pretrained: str | Path, **kwargs) -> HiVAFinetuner:
        """A module initialised from the stage-1 checkpoint ``pretrained`` now, not when
        training starts (``kwargs`` as for the constructor)."""
        module = cls(pretrained=str(pretrained), **kwargs)
        module.load_stage1()
        return module

    def load_stage1(self) -> None:
        """Copy the stage-1 checkpoint's encoder (``pretrained``; its backbone alone with
        ``pretrained_parts`` "backbone") into the model."""
        hp = self.hparams
        load_stage1_encoder(hp.pretrained, self.model.encoder,
                            region=hp.pretrained_parts == "backbone+region")
        self._stage1_pending = False

    def setup(self, stage: str) -> None:
        super().setup(stage)  # checks the data's AUs
        if stage == "fit":
            stats = self.trainer.datamodule.train_label_statistics()
            if self.losses.class_weighted:
                self.class_weights.copy_(stats.class_weights)
            if self.losses.balance_positives:
                self.pos_weight.copy_(stats.positive_weights)
            graph = getattr(self.model, "graph", None)
            if self.heads.cooccurrence_prior and graph is not None:
                graph.set_prior(stats.cooccurrence)
        if self.uses_text and self.descriptions.features is None:
            self.descriptions.set(self.text.load(self.au_numbers), self.device)

    def on_fit_start(self) -> None:
        # here, not in setup: a resumed run has restored its checkpoint by now, and its weights
        # are newer than the stage-1 ones
        resumed = self.trainer.ckpt_path
        if self._stage1_pending and not resumed:
            self.load_stage1()
        rank_zero_info(f"resumed from {resumed} (stage-1 initialisation: {self.stage1_path})"
                       if resumed else
                       f"initialised from stage-1 checkpoint {self.stage1_path}"
                       if self.stage1_path else
                       "initialised from scratch (no stage-1 checkpoint given)")

    def forward(self, images: Tensor, landmarks: Tensor) -> dict[str, Tensor]:
        # training draws descriptions_per_step descriptions per AU, seeded by the step
        per_step = self.text.per_step if self.training else None
        return self.model(images, landmarks,
                          *self.descriptions.inputs(per_step, self.global_step))

    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        out, size = self(batch["image"], batch["landmarks"]), len(batch["labels"])
        self.update_metrics("fit", out["logits"], batch)
        terms = finetune_loss(out, batch["labels"], batch["label_mask"], self.losses,
                              self.class_weights, self.pos_weight)
        loss = terms.pop("loss")
        self.log_dict({f"train/{k}_loss": v for k, v in terms.items()}, batch_size=size)
        self.log("train/loss", loss, prog_bar=True, batch_size=size)
        return loss

    def configure_optimizers(self):
        return self.adamw_warmup_cosine(self.model, self.optim, layered="encoder.backbone.model")

    def checkpoint_meta(self) -> dict:
        return finetune_meta(self.model_config, self.au_numbers, self.stage1_path,
                             self.text.source if self.uses_text else None)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        """Make the checkpoint self-contained (``aukit.checkpoint.self_contained_hparams``);
        the stage-1 path stays in ``checkpoint["aukit"]["pretrained"]``."""
        super().on_save_checkpoint(checkpoint)
        hparams = checkpoint.get(self.CHECKPOINT_HYPER_PARAMS_KEY)
        if hparams is not None:
            self_contained_hparams(hparams, self.model_config["encoder"])

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        super().on_load_checkpoint(checkpoint)
        self.stage1_path = checkpoint[META_KEY].get("pretrained", self.stage1_path)
        self._stage1_pending = False  # the checkpoint's weights replace the stage-1 ones
