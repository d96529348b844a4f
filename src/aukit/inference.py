"""Inference models from finetune checkpoints, with the evaluation-time text baked in.

A finetune checkpoint stores the model weights and the config its model was built from
(``aukit.models.create_model`` rebuilds it), not the text features: they are recomputed here from
the description bank and text encoder the checkpoint names (cached on disk by
``aukit.text.features.encode_bank``) and stored as buffers, so the predictor
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
from aukit.models import create_model
from aukit.models.hiva import HiVA
from aukit.models.linear import LinearAUClassifier, RegionAUClassifier
from aukit.text.features import TextFeatures, TextSettings

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


def checkpoint_model_config(checkpoint: dict[str, Any]) -> dict[str, Any]:
    """The config (``aukit.models.model_config``) of a finetune checkpoint's model, as it stores
    it. ``create_model`` of it reads no other file (no stage-1 checkpoint, no ImageNet weights):
    the checkpoint's state dict holds every weight, so a checkpoint predicts and exports after
    its stage-1 file is gone."""
    meta = checkpoint[META_KEY]
    if "model" not in meta or "encoder" not in meta["model"]:
        raise ValueError("this finetune checkpoint was written by an older aukit (no encoder "
                         "config); finetune again with this version")
    return dict(meta["model"])


def text_features(meta: dict[str, Any], cache_dir: str | Path | None = None) -> TextFeatures:
    """The description features of the checkpoint's AUs under its text encoder and bank."""
    # the checkpoint's TextSettings.source; inference draws no descriptions per step, so one
    # per AU is enough
    settings = TextSettings(**meta["text"], per_step=1,
                            cache_dir=cache_dir or meta["config"]["text"]["cache_dir"])
    return settings.load(meta["aus"])


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
    config = checkpoint_model_config(checkpoint)
    model = create_model(config, encoder={"pretrained_backbone": False})
    text = None
    if config.get("use_text"):
        text = text_features(checkpoint[META_KEY], text_cache_dir).model_inputs()
    state = {k.removeprefix("model."): v for k, v in checkpoint["state_dict"].items()
             if k.startswith("model.")}
    model.load_state_dict(state)
    return AUPredictor(model, checkpoint[META_KEY]["image_size"], text).eval()


def load_predictor(path: str | Path, text_cache_dir: str | Path | None = None) -> AUPredictor:
    """``predictor_from_checkpoint`` of the finetune checkpoint at ``path``."""
    return predictor_from_checkpoint(read_finetune_checkpoint(path), text_cache_dir)
