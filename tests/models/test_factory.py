"""The model factory: every registered name builds and runs, configs are plain data that rebuild
the same model, and a finetune checkpoint is rebuilt from the config it stores."""

import json

import pytest
import torch
import yaml

from aukit.au_maps import canonical_landmarks
from aukit.checkpoint import META_KEY
from aukit.inference import checkpoint_model_config, load_predictor
from aukit.models import PRESETS, create_model, list_models, model_config, register_preset
from finetune.module import HiVAFinetuner

AUS = [1, 12]


def run(model: torch.nn.Module, config: dict, batch: int = 1) -> dict[str, torch.Tensor]:
    size, generator = config["encoder"]["image_size"], torch.Generator().manual_seed(1)
    images = torch.randn(batch, 3, size, size, generator=generator)
    text = (None, None, None)
    if config.get("use_text"):
        dim = config["text_dim"]
        text = (torch.randn(len(AUS), 5, dim, generator=generator),
                torch.ones(len(AUS), 5, dtype=torch.bool),
                torch.randn(len(AUS), dim, generator=generator))
    return model(images, None, *text)


@pytest.mark.parametrize("name", list_models())
def test_every_registered_name_builds_and_runs(name):
    config = model_config(name, au_numbers=AUS)
    model = create_model(config).eval()
    with torch.no_grad():
        out = run(model, config)
    assert out["logits"].shape == (1, len(AUS)) and torch.isfinite(out["logits"]).all()
    if name in PRESETS:
        preset = PRESETS[name]
        assert all(config[k] == v for k, v in preset.items() if k != "encoder")
        assert all(config["encoder"][k] == v for k, v in preset["encoder"].items())


@pytest.mark.parametrize("name", ["hiva", "region", "linear"])
def test_a_config_round_trips_through_yaml_and_json_to_the_same_model(name):
    config = model_config(name, au_numbers=["AU12", "AU1"],
                          encoder={"image_size": 64, "embed_dim": 16, "num_heads": 2,
                                   "roi_size": 2})
    assert config["au_numbers"] == [12, 1]  # one spelling of the AU set
    for text in (yaml.safe_dump(config), json.dumps(config)):
        again = yaml.safe_load(text)
        assert again == config and model_config(again) == config
    first, second = create_model(config).eval(), create_model(yaml.safe_load(text)).eval()
    second.load_state_dict(first.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(run(second, config)["logits"], run(first, config)["logits"])


def test_bad_names_settings_and_values_are_refused():
    with pytest.raises(ValueError, match="unknown model 'hiva_tiny'.*hiva_swin_tiny"):
        model_config("hiva_tiny", au_numbers=AUS)
    with pytest.raises(ValueError, match="'linear' takes no use_graph"):
        model_config("linear", au_numbers=AUS, use_graph=False)
    assert "use_graph" not in model_config("linear", au_numbers=AUS, use_graph=False,
                                           strict=False)
    with pytest.raises(ValueError, match="needs au_numbers"):
        model_config("hiva")
    with pytest.raises(TypeError, match="not plain data"):
        model_config("hiva", au_numbers=AUS, cooccurrence_prior=torch.eye(2))
    with pytest.raises(ValueError, match="the AU encoder takes no heads"):
        model_config("hiva", au_numbers=AUS, encoder={"heads": 2})


def test_encoder_overrides_merge_into_a_presets_encoder():
    config = model_config("hiva_swin_test", au_numbers=AUS, encoder={"num_heads": 8})
    assert config["encoder"]["num_heads"] == 8 and config["encoder"]["roi_size"] == 4


def test_a_registered_preset_builds_by_name():
    register_preset("region_tiny_roi", "region",
                    encoder={"image_size": 64, "roi_size": 2, "embed_dim": 16})
    try:
        model = create_model("region_tiny_roi", au_numbers=AUS)
        assert model.encoder.region.roi_size == 2 and "region_tiny_roi" in list_models()
        with pytest.raises(ValueError, match="already registered"):
            register_preset("region_tiny_roi", "region")
        with pytest.raises(ValueError, match="takes no use_graph"):
            register_preset("region_graph", "region", use_graph=True)
    finally:
        PRESETS.pop("region_tiny_roi", None)


def save(module: HiVAFinetuner, path) -> dict:
    checkpoint = {"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams)}
    module.on_save_checkpoint(checkpoint)
    torch.save(checkpoint, path)
    return checkpoint


@pytest.mark.parametrize("architecture", ["hiva", "region", "linear"])
def test_a_checkpoint_stores_its_model_config_and_inference_rebuilds_the_same_model(
        tmp_path, architecture):
    module = HiVAFinetuner(aus=["AU1", "AU12"], image_size=64,
                           encoder=dict(embed_dim=32, feature_stage=2, roi_size=2),
                           heads=dict(use_text=False), architecture=architecture).eval()
    checkpoint = save(module, tmp_path / "ft.ckpt")
    stored = checkpoint[META_KEY]["model"]
    assert stored == {**module.model_config,
                      "encoder": {**module.model_config["encoder"], "pretrained_backbone": False}}
    assert stored["architecture"] == architecture and stored["encoder"]["conv_stem"] is True
    images = torch.randn(3, 3, 64, 64)
    landmarks = torch.from_numpy(canonical_landmarks(64))[None].expand(3, -1, -1)
    with torch.no_grad():
        expected = module(images, landmarks)["logits"].sigmoid()
        torch.testing.assert_close(load_predictor(tmp_path / "ft.ckpt")(images)[0], expected)
    assert checkpoint_model_config(checkpoint) == stored
    # a checkpoint written before the encoder had a config of its own is refused with the fix
    del checkpoint[META_KEY]["model"]["encoder"]
    with pytest.raises(ValueError, match="older aukit .* finetune again"):
        checkpoint_model_config(checkpoint)
