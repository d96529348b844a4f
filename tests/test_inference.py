"""Inference from a finetune checkpoint: the model rebuilt from its config gives the trained
module's probabilities; template landmarks stand in for a crop without its own; a stage-1
checkpoint is refused."""

import pytest
import torch
from test_export import AUS, save_finetune

from aukit.checkpoint import META_KEY
from aukit.inference import checkpoint_model_config, load_predictor


@pytest.mark.parametrize("architecture", ["hiva", "region", "linear"])
def test_the_predictor_gives_the_trained_models_probabilities(tmp_path, architecture):
    torch.manual_seed(0)
    path = save_finetune(tmp_path / "ft.ckpt", architecture=architecture)
    checkpoint = torch.load(path, weights_only=False)
    predictor = load_predictor(path)
    assert predictor.au_names == [f"AU{a}" for a in checkpoint[META_KEY]["aus"]]
    assert len(predictor.au_names) == len(AUS)
    assert predictor.output_names == (["probabilities"] if architecture == "linear" else
                                      ["probabilities", "activation_maps"])
    images = torch.randn(2, 3, 64, 64)
    landmarks = predictor.landmarks.expand(2, -1, -1)
    outputs = predictor(images)
    assert outputs[0].shape == (2, len(AUS)) and ((outputs[0] > 0) & (outputs[0] < 1)).all()
    # no landmarks: the template's, as given explicitly
    torch.testing.assert_close(predictor(images, landmarks)[0], outputs[0])
    # the rebuilt model is the checkpoint's weights under its own config
    assert checkpoint_model_config(checkpoint)["architecture"] == architecture
    saved = {k[len("model."):]: v for k, v in checkpoint["state_dict"].items()
             if k.startswith("model.")}
    rebuilt = predictor.model.state_dict()
    assert saved.keys() == rebuilt.keys()
    assert all(torch.equal(saved[k], rebuilt[k]) for k in saved)


def test_a_stage1_checkpoint_is_refused_for_inference(tmp_path):
    path = save_finetune(tmp_path / "s1.ckpt", stage="pretrain")
    with pytest.raises(ValueError, match="pretrain checkpoint"):
        load_predictor(path)
