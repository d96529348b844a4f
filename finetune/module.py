"""Stage 2: AU detection as a LightningModule: model, losses, optimiser and logging."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import torch
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor
from torch.nn.parallel import DistributedDataParallel

from aukit.au import au_keys, au_numbers
from aukit.checkpoint import META_KEY, load_stage1_encoder, stage1_meta
from aukit.losses.alignment import state_alignment_loss
from aukit.losses.au_bce import au_bce_loss
from aukit.metrics import AUMetrics
from aukit.models import ARCHITECTURES, create_model, model_config
from aukit.models.encoder import EncoderSettings
from aukit.models.freeze import freeze_parts
from aukit.models.hiva import HeadSettings
from aukit.optim import Optimisation
from aukit.stage import StageModule
from aukit.text.encoders import text_encoder_dim
from aukit.text.features import DescriptionBuffers, TextSettings, load_text_features
from aukit.utils.settings import plain, settings

# what a stage-1 checkpoint initialises: the Swin backbone and the AU region encoder, or the
# backbone alone (the region encoder then starts from scratch)
PRETRAINED_PARTS = ("backbone+region", "backbone")

# finetuning a pretrained network: a lower peak rate, and lower still in its early layers
DEFAULT_OPTIM = Optimisation(lr=5e-4, layer_decay=0.75)
# null backbone, stem and geometry adopt a stage-1 checkpoint's (else swin_test, off)
DEFAULT_ENCODER = EncoderSettings(backbone=None, geometry=None)


@dataclass(frozen=True)
class FinetuneLosses:
    """Stage 2's losses (``--model.losses.*``): masked BCE per AU, plus two switches.

    Args:
        class_weighted: weigh each AU's BCE by its rarity in the training labels.
        balance_positives: weigh each AU's positives by its negatives-to-positives ratio.
        region_supervision: weight of a BCE on a per-AU linear head over the region features
            (deep supervision; 0: off, and no such head).
        alignment_weight: weight of the vision-text alignment loss: AU k's anchor scores
            faces with AU k above faces without it (0: off).
    """

    class_weighted: bool = True
    balance_positives: bool = True
    region_supervision: float = 1.0
    alignment_weight: float = 0.1


DEFAULT_HEADS, DEFAULT_TEXT, DEFAULT_LOSSES = HeadSettings(), TextSettings(), FinetuneLosses()


class HiVAFinetuner(StageModule):
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
            region = pretrained_parts == "backbone+region"
            stage1 = stage1_meta(pretrained, {**encoder, "image_size": image_size},
                                 self.au_numbers, region)["encoder"]
            # null adopts the checkpoint's (its geometry only where its region encoder loads)
            adoptable = ("backbone", "conv_stem", "geometry")[:3 if region else 2]
            encoder_settings = replace(encoder_settings, **{
                key: stage1[key] for key in adoptable if encoder[key] is None})
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
        self.descriptions = DescriptionBuffers(len(self.au_numbers),
                                               self.model_config.get("text_dim", 0))
        # equal on every rank already: DDP need not re-send them from rank 0 at every step
        DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(
            self, [f"descriptions.{field}" for field in DescriptionBuffers.FIELDS])
        self.register_buffer("class_weights", torch.ones(len(self.au_numbers)))
        self.register_buffer("pos_weight", torch.ones(len(self.au_numbers)))
        # "fit": F1 on the augmented training batches as they pass, logged as train/f1_*, so the
        # gap to val/f1_mean shows memorisation (e.g. of identities) epoch by epoch
        self.metrics = torch.nn.ModuleDict({s: AUMetrics(self.au_names)
                                            for s in ("fit", "val", "test")})
        # the last computed values of each split (AUMetrics.compute() keys), for callbacks
        self.metric_values: dict[str, dict[str, float]] = {}

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

    # ---------------------------------------------------------------- set-up
    def setup(self, stage: str) -> None:
        datamodule = self.trainer.datamodule
        if list(datamodule.au_names) != self.au_names:
            raise ValueError(f"the model predicts {self.au_names} but the data has "
                             f"{list(datamodule.au_names)}; train a model for this AU list")
        if stage == "fit":
            stats = datamodule.train_label_statistics()
            if self.losses.class_weighted:
                self.class_weights.copy_(stats.class_weights)
            if self.losses.balance_positives:
                self.pos_weight.copy_(stats.positive_weights)
            graph = getattr(self.model, "graph", None)
            if self.heads.cooccurrence_prior and graph is not None:
                graph.set_prior(stats.cooccurrence)
        if self.uses_text and self.descriptions.features is None:
            text = self.text
            self.descriptions.set(load_text_features(
                text.encoder, self.au_numbers, pretrained=text.pretrained, weights=text.weights,
                descriptions=text.descriptions, min_per_au=text.per_step,
                cache_dir=text.cache_dir), self.device)

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

    # ---------------------------------------------------------------- steps
    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        out = self(batch["image"], batch["landmarks"])
        labels, mask = batch["labels"], batch["label_mask"]
        bce = au_bce_loss(out["logits"], labels, mask, self.class_weights, self.pos_weight)
        self.metrics["fit"].update(out["logits"].detach().sigmoid(), labels, mask)
        loss = bce
        if "region_logits" in out:  # deep supervision of the AU region features
            region = au_bce_loss(out["region_logits"], labels, mask, self.class_weights,
                                 self.pos_weight)
            loss = loss + self.losses.region_supervision * region
            self.log("train/region_bce_loss", region, batch_size=len(labels))
        if "text_anchors" in out and self.losses.alignment_weight > 0:
            align = state_alignment_loss(out["au_features"], out["text_anchors"], labels, mask)
            loss = loss + self.losses.alignment_weight * align
            self.log("train/align_loss", align, batch_size=len(labels))
        self.log("train/bce_loss", bce, batch_size=len(labels))
        self.log("train/loss", loss, prog_bar=True, batch_size=len(labels))
        return loss

    def on_train_epoch_end(self) -> None:
        if self.metrics["fit"].update_count:  # a resumed run may start at an epoch's end
            self._log_split("fit", "train")

    def _eval_step(self, batch: dict, split: str) -> dict[str, Tensor]:
        out = self(batch["image"], batch["landmarks"])
        self.metrics[split].update(out["logits"].sigmoid(), batch["labels"], batch["label_mask"])
        return out

    def validation_step(self, batch: dict, batch_idx: int) -> dict[str, Tensor]:
        return self._eval_step(batch, "val")  # the outputs, for aukit.callbacks

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._eval_step(batch, "test")

    def _log_split(self, split: str, name: str | None = None) -> dict[str, float]:
        """Compute, reset and log ``metrics[split]`` under ``name/`` (default ``split``); keep
        the values in ``metric_values[name]``."""
        values = {k: float(v) for k, v in self.metrics[split].compute().items()}
        self.metrics[split].reset()
        split = name or split
        self.metric_values[split] = values
        # the values are already synced (equal on every rank); sync_dist averages equal numbers,
        # which leaves them unchanged and tells Lightning they are global
        self.log_dict({f"{split}/{k}": v for k, v in values.items()
                       if k.startswith(("f1_", "auc_mean"))}, sync_dist=True)
        return values

    def on_validation_epoch_end(self) -> None:
        values = self._log_split("val")
        if not self.trainer.sanity_checking:
            rank_zero_info(f"epoch {self.current_epoch} validation mean F1 "
                           f"{100 * values['f1_mean']:.1f}")

    def on_test_epoch_end(self) -> None:
        self._log_split("test")

    # ---------------------------------------------------------------- optimisation
    def configure_optimizers(self):
        return self.adamw_warmup_cosine(self.model, self.optim, layered="encoder.backbone.model")

    # ---------------------------------------------------------------- checkpoints
    def checkpoint_meta(self) -> dict:
        config = self.model_config
        text = None
        if self.uses_text:
            text = {"encoder": self.text.encoder, "pretrained": self.text.pretrained,
                    "weights": self.text.weights, "descriptions": self.text.descriptions}
        encoder = config["encoder"]
        return {"architecture": config["architecture"], "backbone": encoder["backbone"],
                "image_size": encoder["image_size"], "feature_stage": encoder["feature_stage"],
                "conv_stem": encoder["conv_stem"], "aus": list(self.au_numbers),
                "pretrained": self.stage1_path,
                # the model's config, which rebuilds it (ImageNet weights are in the state
                # dict), and where its description features come from
                "model": {**config, "encoder": {**encoder, "pretrained_backbone": False}},
                "text": text}

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        """Make the checkpoint self-contained: ``load_from_checkpoint`` (and ``test`` /
        ``fit --ckpt_path``) rebuild the module from ``hyper_parameters``, which must not send
        ``__init__`` to the stage-1 file or to ImageNet weights again, and must name the
        resolved backbone and stem; the state dict holds every weight. The stage-1 path stays
        in ``checkpoint["aukit"]`` ("pretrained" and "config")."""
        super().on_save_checkpoint(checkpoint)
        hparams = checkpoint.get(self.CHECKPOINT_HYPER_PARAMS_KEY)
        if hparams is not None:
            built = self.model_config["encoder"]
            hparams.update(pretrained=None, encoder={
                **hparams["encoder"], "pretrained_backbone": False,
                **{k: built[k] for k in ("backbone", "conv_stem", "geometry")}})

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        super().on_load_checkpoint(checkpoint)
        self.stage1_path = checkpoint[META_KEY].get("pretrained", self.stage1_path)
        self._stage1_pending = False  # the checkpoint's weights replace the stage-1 ones
