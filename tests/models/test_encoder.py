"""The AU encoder: shapes, its config as plain data that rebuilds it, and the comparison that
decides whether a stage-1 encoder may load."""

import pytest
import torch
import yaml

from aukit.au_maps import canonical_landmarks
from aukit.models.encoder import AUEncoder, differing_settings, encoder_config

AUS = (1, 12, 26)
S, E = 64, 16


def build(**settings) -> AUEncoder:
    return AUEncoder(AUS, image_size=S, embed_dim=E, num_heads=2, feature_stage=2, **settings)


def test_forward_gives_tokens_maps_and_features_with_gradients_to_every_part():
    encoder = build(roi_size=2, geometry=True)
    landmarks = torch.from_numpy(canonical_landmarks(S)).expand(2, -1, -1) + torch.randn(2, 68, 2)
    tokens, maps, features = encoder(torch.randn(2, 3, S, S), landmarks)
    n = encoder.grid[0] * encoder.grid[1]
    assert tokens.shape == (2, n, encoder.token_dim) and maps.shape == (2, len(AUS), n)
    assert features.shape == (2, len(AUS), E) and torch.isfinite(features).all()
    features.sum().backward()
    silent = [n for n, p in encoder.named_parameters() if p.requires_grad and p.grad is None]
    assert not silent


def test_without_regions_only_the_backbone_is_built():
    encoder = build(regions=False)
    tokens, maps, features = encoder(torch.randn(1, 3, S, S), None)
    assert encoder.region is None and maps is None and features is None
    assert tokens.shape[-1] == encoder.token_dim and encoder.geometry is None


def test_the_config_is_plain_data_that_rebuilds_the_same_encoder():
    encoder = build(roi_size=2).eval()
    config = yaml.safe_load(yaml.safe_dump(encoder.config))
    assert config["au_numbers"] == list(AUS) and config["conv_stem"] is True  # resolved
    again = AUEncoder(AUS, **encoder_config(config)).eval()
    again.load_state_dict(encoder.state_dict())
    images = torch.randn(1, 3, S, S)
    with torch.no_grad():
        torch.testing.assert_close(again(images, None)[2], encoder(images, None)[2])
    assert again.config == encoder.config


def test_encoder_config_fills_defaults_and_refuses_unknown_settings():
    config = encoder_config({"num_heads": 8})
    assert config["num_heads"] == 8 and config["backbone"] == "swin_test"
    assert "au_numbers" not in config and "regions" not in config
    with pytest.raises(ValueError, match="takes no heads"):
        encoder_config({"heads": 8})


def test_differing_settings_names_every_key_but_training_only_ones():
    stage1 = build().config
    assert differing_settings(stage1, dict(stage1, dropout=0.5, pretrained_backbone=True,
                                           au_numbers=[1])) == []
    assert differing_settings(stage1, dict(stage1, num_heads=4, region_depth=3)) == \
        ["num_heads", "region_depth"]
    assert differing_settings(stage1, dict(stage1, backbone=None, geometry=None)) == []
    # the backbone alone is compared on the backbone's settings only
    assert differing_settings(stage1, dict(stage1, num_heads=8, geometry=True), region=False) == []
    assert differing_settings(stage1, dict(stage1, image_size=96), region=False) == ["image_size"]
