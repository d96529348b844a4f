"""Text features of a whole description bank, computed once per (model, bank, AUs) and cached."""

from __future__ import annotations

import hashlib
import logging
import os
import pickle
import tempfile
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, fields, replace
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from aukit.au import au_numbers
from aukit.text.bank import DescriptionBank, load_description_bank
from aukit.text.encoders import TextEncoder, build_text_encoder

ENV_CACHE = "AUKIT_CACHE"
# bump when the cached layout changes so stale files are never read
_CACHE_FORMAT = 1
_log = logging.getLogger(__name__)


@dataclass(eq=False)
class TextFeatures:
    """Per-AU description features, padded to the largest description count ``M``.

    ``tokens`` ``[A, M, L, D]``, ``token_mask`` ``[A, M, L]`` (True = real token),
    ``sentence`` ``[A, M, D]``, ``desc_mask`` ``[A, M]`` (True = a real description). Padded
    descriptions have an all-False ``token_mask`` row: select with ``desc_mask`` (or
    :meth:`sample`) before attending over their tokens.
    """

    tokens: Tensor
    token_mask: Tensor
    sentence: Tensor
    desc_mask: Tensor

    def __post_init__(self) -> None:
        a, m, l, d = self.tokens.shape
        expected = {"token_mask": (a, m, l), "sentence": (a, m, d), "desc_mask": (a, m)}
        for name, shape in expected.items():
            if tuple(getattr(self, name).shape) != shape:
                raise ValueError(f"TextFeatures.{name} has shape {tuple(getattr(self, name).shape)}"
                                 f" but tokens [A, M, L, D]={[a, m, l, d]} require {list(shape)}")
        if not bool(self.desc_mask.any(1).all()):
            raise ValueError("TextFeatures: every AU needs at least one real description")

    @property
    def dim(self) -> int:
        """``D``, the text encoder's feature size."""
        return int(self.tokens.shape[-1])

    @property
    def num_descriptions(self) -> Tensor:
        """``[A]`` number of real descriptions per AU."""
        return self.desc_mask.sum(1)

    def to(self, device: torch.device | str) -> TextFeatures:
        return replace(self, **{f.name: getattr(self, f.name).to(device) for f in fields(self)})

    def sample(self, m: int, generator: torch.Generator | None = None) -> TextFeatures:
        """``m`` distinct real descriptions per AU, drawn at random -> tensors ``[A, m, ...]``."""
        fewest = int(self.num_descriptions.min())
        if not 1 <= m <= fewest:
            raise ValueError(f"cannot sample m={m} descriptions per AU: must be in 1..{fewest} "
                             "(the smallest number of descriptions any AU has)")
        device = generator.device if generator is not None else self.desc_mask.device
        scores = torch.rand(self.desc_mask.shape, generator=generator, device=device)  # [A, M]
        # padding scores above every real one, so the first m of the sort are real descriptions
        scores = scores.to(self.desc_mask.device).masked_fill(~self.desc_mask, 2.0)
        index = scores.argsort(dim=1)[:, :m]  # [A, m]
        rows = torch.arange(index.shape[0], device=index.device)[:, None]  # [A, 1]
        return replace(self, **{f.name: getattr(self, f.name)[rows, index] for f in fields(self)})

    def mean_sentence(self) -> Tensor:
        """``[A, D]`` mean sentence feature over the real descriptions (the evaluation anchor)."""
        weights = self.desc_mask.unsqueeze(-1).to(self.sentence.dtype)  # [A, M, 1]
        return (self.sentence * weights).sum(1) / weights.sum(1)

    def model_inputs(self) -> tuple[Tensor, Tensor, Tensor]:
        """What HiVA takes: every description's tokens per AU -> tokens [A, M * L, D],
        mask [A, M * L] bool, anchor vectors [A, D] (the mean sentence feature)."""
        mask = self.token_mask & self.desc_mask.unsqueeze(-1)  # [A, M, L]
        return self.tokens.flatten(1, 2), mask.flatten(1), self.mean_sentence()


def default_cache_dir() -> Path:
    """``$AUKIT_CACHE/text`` when ``AUKIT_CACHE`` is set, else ``~/.cache/aukit/text``."""
    root = os.environ.get(ENV_CACHE)
    return (Path(root).expanduser() if root else Path.home() / ".cache" / "aukit") / "text"


def cache_key(encoder: TextEncoder, bank: DescriptionBank, aus: Sequence[int]) -> str:
    """SHA-256 naming the features of ``aus`` from ``bank`` under ``encoder``."""
    parts = (f"format={_CACHE_FORMAT}", f"model={encoder.model_id}", f"bank={bank.digest()}",
             f"aus={','.join(map(str, aus))}", f"max_length={encoder.max_length}")
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


@torch.no_grad()
def _encode(encoder: TextEncoder, texts: list[list[str]], batch_size: int) -> TextFeatures:
    flat = [text for per_au in texts for text in per_au]
    chunks = [encoder(flat[i:i + batch_size]) for i in range(0, len(flat), batch_size)]
    length = max(tokens.shape[1] for tokens, _, _ in chunks)
    a, m, d = len(texts), max(map(len, texts)), chunks[0][0].shape[-1]
    tokens = torch.zeros(a, m, length, d)
    token_mask = torch.zeros(a, m, length, dtype=torch.bool)
    sentence = torch.zeros(a, m, d)
    desc_mask = torch.zeros(a, m, dtype=torch.bool)
    for au, per_au in enumerate(texts):
        desc_mask[au, :len(per_au)] = True
    slots = desc_mask.nonzero().tolist()  # (au, description) of each flat text, in order
    start = 0
    for chunk_tokens, chunk_mask, chunk_sentence in chunks:
        au_index, desc_index = torch.tensor(slots[start:start + len(chunk_sentence)]).T
        n, l = chunk_mask.shape
        tokens[au_index, desc_index, :l] = chunk_tokens.float().cpu()
        token_mask[au_index, desc_index, :l] = chunk_mask.cpu()
        sentence[au_index, desc_index] = chunk_sentence.float().cpu()
        start += n
    return TextFeatures(tokens, token_mask, sentence, desc_mask)


def _load_cached(path: Path) -> TextFeatures | None:
    try:
        stored = torch.load(path, map_location="cpu", weights_only=True)
        return TextFeatures(**{f.name: stored[f.name] for f in fields(TextFeatures)})
    except (OSError, EOFError, pickle.UnpicklingError, RuntimeError, KeyError, ValueError,
            TypeError) as err:
        warnings.warn(f"ignoring unreadable text-feature cache {path} ({err}); recomputing",
                      stacklevel=3)
        return None


def _save_atomic(features: TextFeatures, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    # write then rename, so a crash or a concurrent DDP rank never leaves a half-written file
    handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.stem, suffix=".tmp")
    os.close(handle)
    try:
        torch.save({f.name: getattr(features, f.name) for f in fields(features)}, tmp)
        os.chmod(tmp, 0o644)  # mkstemp makes it owner-only; a shared cache must stay readable
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def encode_bank(encoder: TextEncoder, bank: DescriptionBank, aus: Sequence[int | str] | str,
                cache_dir: str | Path | None = None, *, batch_size: int = 64) -> TextFeatures:
    """Features of every description of ``aus`` (order kept), on the CPU, ``A = len(aus)``.

    Cached at ``<cache_dir>/<cache_key>.pt`` (default :func:`default_cache_dir`): a second call
    with the same encoder weights, bank content, AUs and max_length loads the file and runs no
    encoder forward. A trainable (unfrozen) encoder is never cached.
    """
    aus = au_numbers(aus)
    texts = bank.for_aus(aus)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if not encoder.frozen:
        warnings.warn("encode_bank: the text encoder is trainable, so its features change during "
                      "training; computing them without the cache", stacklevel=2)
        return _encode(encoder, texts, batch_size)
    folder = Path(cache_dir or default_cache_dir()).expanduser()
    path = folder / f"{cache_key(encoder, bank, aus)}.pt"
    if path.is_file() and (cached := _load_cached(path)) is not None:
        _log.info("text features loaded from %s", path)
        return cached
    features = _encode(encoder, texts, batch_size)
    _save_atomic(features, path)
    _log.info("text features of %d AUs from %s cached at %s", len(aus), encoder.model_id, path)
    return features




@dataclass(frozen=True)
class TextSettings:
    """Where the AU descriptions and their text encoder come from (the finetune stage's
    ``--model.text.*``).

    Args:
        encoder: "minilm" (the offline default) or "open_clip:<model>".
        pretrained: an open_clip weights tag (e.g. openai; a download unless cached).
        weights: local weights: an open_clip file, or a MiniLM model folder.
        descriptions: a description bank YAML (null: the shipped conf/au_descriptions.yaml).
        per_step: descriptions drawn per AU at each training step (each AU needs as many).
        cache_dir: where encoded banks are kept (null: under $AUKIT_CACHE).
    """

    encoder: str = "minilm"
    pretrained: str | None = None
    weights: str | None = None
    descriptions: str | None = None
    per_step: int = 4
    cache_dir: str | None = None

    @property
    def source(self) -> dict[str, str | None]:
        """What the description features come from (what a checkpoint records to rebuild
        them): encoder, pretrained, weights and descriptions."""
        return {k: getattr(self, k) for k in ("encoder", "pretrained", "weights", "descriptions")}

    def load(self, aus: Sequence[int]) -> TextFeatures:
        """The features of ``aus``' descriptions as these settings say (``load_text_features``;
        each AU needs ``per_step`` descriptions)."""
        return load_text_features(self.encoder, aus, pretrained=self.pretrained,
                                  weights=self.weights, descriptions=self.descriptions,
                                  min_per_au=self.per_step, cache_dir=self.cache_dir)


class DescriptionBuffers(nn.Module):
    """A model's description features (``TextFeatures``) as non-persistent buffers: they follow
    the module across devices and are never saved (set-up recomputes them from the
    descriptions, or reads them from the cache).

    Args:
        num_aus: the AUs ``A`` the features must describe, in the model's order.
        dim: the text encoder's feature size ``D`` the model was built for.
    """

    FIELDS = tuple(f.name for f in fields(TextFeatures))

    def __init__(self, num_aus: int, dim: int) -> None:
        super().__init__()
        self.num_aus, self.dim = num_aus, dim
        for field in self.FIELDS:
            self.register_buffer(field, None, persistent=False)
        self._view: TextFeatures | None = None

    @classmethod
    def attach(cls, module: nn.Module, name: str, num_aus: int, dim: int) -> DescriptionBuffers:
        """New buffers as ``module.<name>``, which DDP is told not to broadcast: they are equal
        on every rank already (each computes them at set-up)."""
        buffers = cls(num_aus, dim)
        setattr(module, name, buffers)
        DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(
            module, [f"{name}.{field}" for field in cls.FIELDS])
        return buffers

    @property
    def features(self) -> TextFeatures | None:
        """The features, or None before ``set``."""
        if self.tokens is None:
            return None
        if self._view is None or self._view.tokens is not self.tokens:  # moved, or new
            self._view = TextFeatures(*(getattr(self, f) for f in self.FIELDS))
        return self._view

    def set(self, features: TextFeatures | None, device: torch.device | str = "cpu") -> None:
        """Holds ``features`` on ``device`` (None: none); refuses features of another AU count
        or size."""
        if features is not None:
            if features.tokens.shape[0] != self.num_aus or features.dim != self.dim:
                raise ValueError(f"text features [A, M, L, D] = {list(features.tokens.shape)} do "
                                 f"not fit this model: A={self.num_aus} AUs, D={self.dim} (the "
                                 "text encoder's size when it was built)")
            features = features.to(device)
        for field in self.FIELDS:
            setattr(self, field, None if features is None else getattr(features, field))

    def inputs(self, per_step: int | None = None, step: int = 0
               ) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
        """HiVA's text inputs (``TextFeatures.model_inputs``: tokens [A, T, D], mask [A, T],
        anchor vectors [A, D]) from ``per_step`` descriptions per AU drawn with seed ``step``
        (training), or from all of them (None: evaluation); Nones before ``set``."""
        features = self.features
        if features is None:
            return None, None, None
        if per_step is not None:
            features = features.sample(per_step, torch.Generator().manual_seed(int(step)))
        return features.model_inputs()

def load_text_features(encoder: str, aus: Sequence[int | str] | str, *,
                       pretrained: str | None = None, weights: str | None = None,
                       descriptions: str | Path | None = None, min_per_au: int = 1,
                       cache_dir: str | Path | None = None) -> TextFeatures:
    """The features of every description of ``aus`` in the bank ``descriptions`` (default
    ``conf/au_descriptions.yaml``; each AU needs ``min_per_au``) under the text encoder
    ``encoder`` (``build_text_encoder``: "minilm" or "open_clip:<model>"; ``pretrained``, an
    open_clip tag; ``weights``, local weights), cached by ``encode_bank``.

    What the finetune module calls at set-up and inference calls for a checkpoint: the encoder
    is built here, used once and dropped, so it is never part of a model or a checkpoint.
    """
    options = {k: v for k, v in (("pretrained", pretrained), ("weights_path", weights)) if v}
    text_encoder = build_text_encoder(encoder, **options)
    bank = load_description_bank(descriptions, aus, min_per_au=min_per_au)
    return encode_bank(text_encoder, bank, aus, cache_dir)
