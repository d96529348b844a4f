"""Stage 2: HiVA AU detection as a LightningModule (train, validate, test, report)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor

from aukit.au import au_keys, au_numbers
from aukit.checkpoint import META_KEY, load_stage1_encoder
from aukit.losses.alignment import ALIGNMENTS, alignment_loss, state_alignment_loss
from aukit.losses.au_bce import au_bce_loss
from aukit.metrics import AUMetrics, format_f1_table
from aukit.models.hiva import HiVA
from aukit.models.linear import LinearAUClassifier, RegionAUClassifier
from aukit.stage import StageModule
from aukit.text.bank import load_description_bank
from aukit.text.encoders import build_text_encoder
from aukit.text.features import encode_bank
from aukit.visualize import activation_grid

ARCHITECTURES = ("hiva", "linear", "region")


class HiVAFinetuner(StageModule):
    """Trains HiVA (or a plain baseline: ``linear``, Swin + one linear head; ``region``, Swin + AU
    region features + one linear head per AU) with masked class-weighted BCE plus a
    vision-text alignment loss; selects checkpoints on ``val/f1_mean`` only.

    ``pretrained`` is a stage-1 checkpoint whose backbone and AU region encoder initialise the
    model; its backbone name, stem and image size must match (``backbone: null`` and
    ``conv_stem: null`` adopt its own). It is read once, when training starts: a checkpoint of
    this module holds those weights and the resolved architecture, and loads without the stage-1
    file (or ImageNet weights, ``pretrained_backbone``), which may since have moved.
    ``region_supervision`` weighs a BCE on HiVA's per-AU linear head over the region features
    (deep supervision, 0 = off), so the encoder gets the plain region baseline's signal under
    HiVA's components. ``alignment`` is "state" (AU k's anchor scores faces with AU k above
    faces without it) or "slots" (version 1: AU k's feature against the other AUs' anchors).
    The text encoder is ``text_encoder`` ("minilm", the offline default, or "open_clip:<model>"
    with ``text_pretrained``, an open_clip tag); ``text_weights`` is local weights (an open_clip
    file, or a MiniLM model folder).
    """

    stage = "finetune"

    def __init__(self, aus: list[str], image_size: int = 128, architecture: str = "hiva",
                 backbone: str | None = None, pretrained: str | None = None,
                 pretrained_backbone: bool = False, feature_stage: int = 3,
                 conv_stem: bool | None = None, embed_dim: int = 128, num_heads: int = 4,
                 region_depth: int = 1, attention_sigma: float = 0.3, dropout: float = 0.1,
                 roi_size: int = 0, roi_extent: float = 0.3,
                 use_graph: bool = True, use_ddca: bool = True, use_cdca: bool = True,
                 use_text: bool = True, map_prior: bool = True, graph_top_k: int | None = 4,
                 cooccurrence_prior: bool = True, text_encoder: str = "minilm",
                 text_pretrained: str | None = None, text_weights: str | None = None,
                 descriptions: str | None = None, descriptions_per_step: int = 4,
                 text_cache_dir: str | None = None, alignment_weight: float = 0.1,
                 alignment: str = "state", region_supervision: float = 1.0,
                 class_weighted: bool = True, balance_positives: bool = True,
                 lr: float = 5e-4, weight_decay: float = 0.05,
                 layer_decay: float = 0.75, warmup_epochs: float = 1.0):
        super().__init__()
        if architecture not in ARCHITECTURES:
            raise ValueError(f"architecture must be one of {ARCHITECTURES}, got {architecture!r}")
        if alignment not in ALIGNMENTS:
            raise ValueError(f"alignment must be one of {ALIGNMENTS} (--model.alignment), got "
                             f"{alignment!r}")
        self.save_hyperparameters()
        self.au_numbers = au_numbers(aus)
        self.au_names = au_keys(self.au_numbers)
        self.stage1 = None
        if pretrained:  # not when loading a checkpoint of this module: see on_save_checkpoint
            self.stage1 = load_stage1_encoder(pretrained, backbone, image_size, feature_stage,
                                              self.au_numbers, conv_stem, roi_size, roi_extent)
            backbone = self.stage1.meta["backbone"]
            conv_stem = self.stage1.meta["conv_stem"]
        backbone = backbone or "swin_test"
        self.uses_text = architecture == "hiva" and use_text
        common = dict(au_numbers=self.au_numbers, backbone=backbone, image_size=image_size,
                      pretrained_backbone=pretrained_backbone, feature_stage=feature_stage,
                      conv_stem=conv_stem)
        region = dict(embed_dim=embed_dim, num_heads=num_heads, region_depth=region_depth,
                      attention_sigma=attention_sigma, dropout=dropout, roi_size=roi_size,
                      roi_extent=roi_extent)
        if architecture == "linear":
            self.model = LinearAUClassifier(**common)
        elif architecture == "region":
            self.model = RegionAUClassifier(**common, **region)
        else:
            self.model = HiVA(**common, **region, use_graph=use_graph, use_ddca=use_ddca,
                              use_cdca=use_cdca, use_text=use_text, map_prior=map_prior,
                              region_head=region_supervision > 0,
                              graph_top_k=graph_top_k,
                              cooccurrence_prior=torch.eye(len(self.au_numbers))
                              if cooccurrence_prior else None,
                              text_dim=self._text_dim() if self.uses_text else 384)
        # the resolved choices, so a checkpoint rebuilds exactly this model
        self.hparams.backbone = backbone
        self.hparams.conv_stem = self.model.backbone.conv_stem
        # where the weights came from, kept through checkpoints that no longer read it
        self.stage1_path = str(self.stage1.path) if self.stage1 is not None else None
        if self.stage1 is not None:
            self.model.backbone.load_state_dict(self.stage1.backbone)
            if hasattr(self.model, "region"):
                self.model.region.load_state_dict(self.stage1.region)
        self.register_buffer("class_weights", torch.ones(len(self.au_numbers)))
        self.register_buffer("pos_weight", torch.ones(len(self.au_numbers)))
        self.text = None
        # "fit": F1 on the augmented training batches as they pass, logged as train/f1_*, so the
        # gap to val/f1_mean shows memorisation (e.g. of identities) epoch by epoch
        self.metrics = torch.nn.ModuleDict({s: AUMetrics(self.au_names)
                                            for s in ("fit", "val", "test")})
        self._shown_images: tuple[Tensor, Tensor, Tensor] | None = None  # for TensorBoard

    def _text_dim(self) -> int:
        # a tuple keeps the frozen encoder out of the module tree, so it is neither trained
        # nor written into checkpoints
        options = {k: v for k, v in (("pretrained", self.hparams.text_pretrained),
                                      ("weights_path", self.hparams.text_weights)) if v}
        self._encoder = (build_text_encoder(self.hparams.text_encoder, **options),)
        return self._encoder[0].dim

    # ---------------------------------------------------------------- set-up
    def setup(self, stage: str) -> None:
        datamodule = self.trainer.datamodule
        if list(datamodule.au_names) != self.au_names:
            raise ValueError(f"the model predicts {self.au_names} but the data has "
                             f"{list(datamodule.au_names)}; train a model for this AU list")
        if stage == "fit":
            stats = datamodule.train_label_statistics()
            if self.hparams.class_weighted:
                self.class_weights.copy_(stats.class_weights)
            if self.hparams.balance_positives:
                self.pos_weight.copy_(stats.positive_weights)
            graph = getattr(self.model, "graph", None)
            if self.hparams.cooccurrence_prior and graph is not None:
                graph.set_prior(stats.cooccurrence)
        if self.uses_text and self.text is None:
            bank = load_description_bank(self.hparams.descriptions, self.au_numbers,
                                         min_per_au=self.hparams.descriptions_per_step)
            self.text = encode_bank(self._encoder[0], bank, self.au_numbers,
                                    self.hparams.text_cache_dir)

    def on_fit_start(self) -> None:
        # here, not in setup: a resumed run has restored its checkpoint by now
        resumed = self.trainer.ckpt_path
        rank_zero_info(f"resumed from {resumed} (stage-1 initialisation: {self.stage1_path})"
                       if resumed else
                       f"initialised from stage-1 checkpoint {self.stage1_path}"
                       if self.stage1_path else
                       "initialised from scratch (no stage-1 checkpoint given)")

    def text_inputs(self) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
        """Text for one step: a random subset of descriptions per AU in training, all of them
        at evaluation -> tokens [A, T, Dt], mask [A, T], anchor vectors [A, Dt]."""
        if self.text is None:
            return None, None, None
        if self.text.tokens.device != self.device:
            self.text = self.text.to(self.device)
        text = self.text
        if self.training:
            generator = torch.Generator().manual_seed(int(self.global_step))
            text = text.sample(self.hparams.descriptions_per_step, generator)
        return text.model_inputs()

    def forward(self, images: Tensor, landmarks: Tensor) -> dict[str, Tensor]:
        return self.model(images, landmarks, *self.text_inputs())

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
            loss = loss + self.hparams.region_supervision * region
            self.log("train/region_bce_loss", region, batch_size=len(labels))
        if "text_anchors" in out and self.hparams.alignment_weight > 0:
            loss_fn = state_alignment_loss if self.hparams.alignment == "state" else alignment_loss
            align = loss_fn(out["au_features"], out["text_anchors"], labels, mask)
            loss = loss + self.hparams.alignment_weight * align
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

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        out = self._eval_step(batch, "val")
        if batch_idx == 0 and "act_maps" in out:
            self._shown_images = (batch["image"][:2], out["act_maps"][:2],
                                  out["logits"][:2].sigmoid())

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._eval_step(batch, "test")

    def _log_split(self, split: str, name: str | None = None) -> dict[str, float]:
        """Compute, reset and log ``metrics[split]`` under ``name/`` (default ``split``)."""
        values = {k: float(v) for k, v in self.metrics[split].compute().items()}
        self.metrics[split].reset()
        split = name or split
        # the values are already synced (equal on every rank); sync_dist averages equal numbers,
        # which leaves them unchanged and tells Lightning they are global
        self.log_dict({f"{split}/{k}": v for k, v in values.items()
                       if k.startswith(("f1_", "auc_mean"))}, sync_dist=True)
        return values

    def on_validation_epoch_end(self) -> None:
        values = self._log_split("val")
        if self.trainer.sanity_checking:
            return
        rank_zero_info(f"epoch {self.current_epoch} validation mean F1 "
                       f"{100 * values['f1_mean']:.1f}")
        experiment = getattr(self.logger, "experiment", None)
        if self._shown_images is not None and hasattr(experiment, "add_image"):
            images, maps, probs = self._shown_images
            for i in range(len(images)):
                grid = activation_grid(images[i], maps[i], self.au_names, probs[i])
                experiment.add_image(f"val/activation_maps_{i}", grid, self.global_step,
                                     dataformats="HWC")
            experiment.add_text("val/f1_table", format_f1_table(values, self.au_names),
                                self.global_step)

    def on_test_epoch_end(self) -> None:
        values = self._log_split("test")
        table = format_f1_table(values, self.au_names)
        rank_zero_info(f"\ntest per-AU results ({len(self.au_names)} AUs):\n{table}")
        if self.trainer.is_global_zero:
            self._write_report(values)

    def _write_report(self, values: dict[str, float]) -> None:
        # next to the run's logs (checkpoint hyperparameters override CLI arguments under `test
        # --ckpt_path`, so the place is the logger's, set with --trainer.logger.init_args.*)
        folder = Path(self.logger.log_dir if self.logger else self.trainer.default_root_dir)
        folder.mkdir(parents=True, exist_ok=True)
        report = {"aus": self.au_names, "metrics": values,
                  "checkpoint": getattr(self.trainer, "ckpt_path", None),
                  "architecture": self.hparams.architecture, "backbone": self.hparams.backbone}
        (folder / "test_report.json").write_text(json.dumps(report, indent=2))
        rows = ["au,f1,precision,recall,accuracy,auc"]
        for name in self.au_names + ["mean"]:
            rows.append(",".join([name] + [f"{values.get(f'{m}_{name}', np.nan):.6f}" for m in
                                           ("f1", "precision", "recall", "accuracy", "auc")]))
        (folder / "test_report.csv").write_text("\n".join(rows) + "\n")
        rank_zero_info(f"test report: {folder / 'test_report.json'} and test_report.csv")

    # ---------------------------------------------------------------- optimisation
    def configure_optimizers(self):
        hp = self.hparams
        if hasattr(self.model, "parameter_groups"):
            groups = self.model.parameter_groups(hp.lr, hp.weight_decay, hp.layer_decay)
        else:
            groups = [{"params": list(self.model.parameters()), "lr": hp.lr,
                       "weight_decay": hp.weight_decay}]
        return self.adamw_warmup_cosine(groups)

    # ---------------------------------------------------------------- checkpoints
    def checkpoint_meta(self) -> dict:
        hp = self.hparams
        return {"architecture": hp.architecture, "backbone": hp.backbone,
                "image_size": hp.image_size, "feature_stage": hp.feature_stage,
                "conv_stem": hp.conv_stem,
                "aus": list(self.au_numbers),
                "pretrained": self.stage1_path}

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        """Make the checkpoint self-contained: ``load_from_checkpoint`` (and ``test`` /
        ``predict --ckpt_path``) rebuild the module from ``hyper_parameters``, which must not
        send ``__init__`` to the stage-1 file or to ImageNet weights again; the state dict holds
        every weight and ``backbone`` / ``conv_stem`` are already the resolved ones. The
        stage-1 path stays in ``checkpoint["aukit"]`` ("pretrained" and "config")."""
        super().on_save_checkpoint(checkpoint)
        hparams = checkpoint.get(self.CHECKPOINT_HYPER_PARAMS_KEY)
        if hparams is not None:
            hparams.update(pretrained=None, pretrained_backbone=False)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        super().on_load_checkpoint(checkpoint)
        self.stage1_path = checkpoint[META_KEY].get("pretrained", self.stage1_path)

    @classmethod
    def load_from_checkpoint(cls, checkpoint_path, *args, **kwargs) -> HiVAFinetuner:
        """``LightningModule.load_from_checkpoint`` that never reads the stage-1 checkpoint or
        ImageNet weights, also for checkpoints written before ``on_save_checkpoint`` dropped
        them (keyword arguments still override)."""
        kwargs.setdefault("pretrained", None)
        kwargs.setdefault("pretrained_backbone", False)
        return super().load_from_checkpoint(checkpoint_path, *args, **kwargs)
