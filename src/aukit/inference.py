"""Inference models from finetune checkpoints, with the evaluation-time text baked in.

A finetune checkpoint stores the model weights and its hyperparameters, not the text features:
they are recomputed here from the description bank and text encoder the hyperparameters name
(cached on disk by ``aukit.text.features.encode_bank``) and stored as buffers, so the predictor
is a plain ``images -> probabilities, activation maps`` module that exports to TorchScript and
ONNX. Inputs are aligned face crops (``aukit.data.prepare.align_face``); their 68 landmarks are an
optional input (``aukit.predict`` gives each face's own), by default the canonical template, which
is baked in, so the exported graphs take images only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from aukit.au import au_keys
from aukit.au_maps import canonical_landmarks
from aukit.checkpoint import META_KEY, read_checkpoint
from aukit.models.hiva import HiVA
from aukit.models.linear import LinearAUClassifier, RegionAUClassifier
from aukit.text.bank import load_description_bank
from aukit.text.encoders import build_text_encoder
from aukit.text.features import TextFeatures, encode_bank

THRESHOLD = 0.5  # the decision threshold of the benchmark protocol: never tuned


class AUPredictor(nn.Module):
    """Aligned, normalised face crops ``[B, 3, S, S]`` (and their landmarks ``[B, 68, 2]`` in
    crop pixels; default: the template) -> ``(probabilities [B, A], activation maps
    [B, A, h, w])``; the linear baseline has no maps and returns ``(probabilities,)``
    (``has_maps`` says which).

    ``text`` is (tokens [A, T, Dt], mask [A, T] bool, anchor vectors [A, Dt]) for a text model.
    """

    def __init__(self, model: HiVA | LinearAUClassifier | RegionAUClassifier, image_size: int,
                 text: tuple[Tensor, Tensor, Tensor] | None = None) -> None:
        super().__init__()
        self.model = model.eval()
        self.image_size = image_size
        self.au_names = au_keys(model.aus)
        self.has_maps = not isinstance(model, LinearAUClassifier)
        # [1, 68, 2]: the landmarks of a crop that comes without its own
        self.register_buffer("landmarks", torch.from_numpy(canonical_landmarks(image_size))[None])
        for name, value in zip(("text_tokens", "text_mask", "text_vec"), text or (None,) * 3,
                               strict=True):
            self.register_buffer(name, value)

    @property
    def output_names(self) -> list[str]:
        return ["probabilities", "activation_maps"][:1 + self.has_maps]

    def forward(self, images: Tensor, landmarks: Tensor | None = None) -> tuple[Tensor, ...]:
        if landmarks is None:
            landmarks = self.landmarks.expand(images.shape[0], -1, -1)  # [B, 68, 2]
        out = self.model(images, landmarks, self.text_tokens, self.text_mask, self.text_vec)
        probs = out["logits"].float().sigmoid()
        return (probs, out["act_maps"].float()) if self.has_maps else (probs,)


def build_model(meta: dict[str, Any], text_dim: int) -> nn.Module:
    """The untrained stage-2 model a finetune checkpoint's metadata describes. It reads no other
    file (no stage-1 checkpoint, no ImageNet weights): the checkpoint's state dict holds every
    weight, so a checkpoint predicts and exports after its stage-1 file is gone."""
    cfg = meta["config"]
    common = dict(au_numbers=meta["aus"], backbone=meta["backbone"],
                  image_size=meta["image_size"], feature_stage=meta["feature_stage"],
                  conv_stem=meta.get("conv_stem", False))
    if meta["architecture"] == "linear":
        return LinearAUClassifier(**common)
    region = {k: cfg[k] for k in ("embed_dim", "num_heads", "region_depth", "attention_sigma",
                                  "dropout")}
    # map pooling: checkpoints written before ROI pooling existed
    region.update(roi_size=cfg.get("roi_size", 0), roi_extent=cfg.get("roi_extent", 0.3))
    if meta["architecture"] == "region":
        return RegionAUClassifier(**common, **region)
    # an identity prior only creates the buffer; the checkpoint holds the trained one
    prior = torch.eye(len(meta["aus"])) if cfg["cooccurrence_prior"] else None
    return HiVA(**common, **region, text_dim=text_dim, use_graph=cfg["use_graph"],
                use_ddca=cfg["use_ddca"], use_cdca=cfg["use_cdca"], use_text=cfg["use_text"],
                # False: checkpoints written before these existed
                map_prior=cfg.get("map_prior", False),
                region_head=cfg.get("region_supervision", 0) > 0,
                graph_top_k=cfg["graph_top_k"], cooccurrence_prior=prior)


def text_features(meta: dict[str, Any], cache_dir: str | Path | None = None) -> TextFeatures:
    """The description features of the checkpoint's AUs under its text encoder and bank."""
    cfg = meta["config"]
    options = {k: v for k, v in (("pretrained", cfg.get("text_pretrained")),
                                  ("weights_path", cfg.get("text_weights"))) if v}
    encoder = build_text_encoder(cfg["text_encoder"], **options)
    bank = load_description_bank(cfg.get("descriptions"), meta["aus"])
    return encode_bank(encoder, bank, meta["aus"], cache_dir or cfg.get("text_cache_dir"))


def read_finetune_checkpoint(path: str | Path) -> dict[str, Any]:
    """``read_checkpoint(path, "finetune")``, saying why a stage-1 checkpoint cannot predict."""
    try:
        return read_checkpoint(path, "finetune")
    except ValueError as err:
        if " is a pretrain checkpoint" not in str(err):
            raise
        raise ValueError(f"{err}. A stage-1 (pretrain) checkpoint holds only the "
                         "self-supervised encoder and has no AU head, so it cannot predict AUs; "
                         "finetune it first (make finetune PRETRAINED=<it>)") from err


def predictor_from_checkpoint(checkpoint: dict[str, Any],
                              text_cache_dir: str | Path | None = None) -> AUPredictor:
    """An eval-mode ``AUPredictor`` on the CPU from a loaded finetune checkpoint."""
    meta = checkpoint[META_KEY]
    uses_text = meta["architecture"] == "hiva" and meta["config"]["use_text"]
    text = text_features(meta, text_cache_dir).model_inputs() if uses_text else None
    model = build_model(meta, text[0].shape[-1] if text else 384)
    state = {k.removeprefix("model."): v for k, v in checkpoint["state_dict"].items()
             if k.startswith("model.")}
    model.load_state_dict(state)
    return AUPredictor(model, meta["image_size"], text).eval()


def load_predictor(path: str | Path, text_cache_dir: str | Path | None = None) -> AUPredictor:
    """``predictor_from_checkpoint`` of the finetune checkpoint at ``path``."""
    return predictor_from_checkpoint(read_finetune_checkpoint(path), text_cache_dir)
