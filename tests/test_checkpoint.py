"""The hand-over between stages: a stage-1 encoder's null settings adopted (and only where that
part is handed over), a finetune checkpoint that describes and rebuilds itself."""

import pytest
from test_finetune import save_stage1

from aukit.checkpoint import adopt_stage1_settings, finetune_meta, self_contained_hparams
from aukit.models.encoder import EncoderSettings
from finetune.module import HiVAFinetuner

AUS = (12,)


def test_null_settings_adopt_the_stage1_encoders_and_others_are_kept(tmp_path):
    save_stage1(tmp_path / "s1.ckpt", geometry=True, conv_stem=True)
    wanted = EncoderSettings(backbone=None, conv_stem=None, geometry=None, embed_dim=32)
    adopted = adopt_stage1_settings(tmp_path / "s1.ckpt", wanted, 64, AUS)
    assert (adopted.backbone, adopted.conv_stem, adopted.geometry) == ("swin_test", True, True)
    assert adopted.embed_dim == 32
    # the backbone alone is handed over: the region encoder's geometry is not adopted
    backbone_only = adopt_stage1_settings(tmp_path / "s1.ckpt", wanted, 64, AUS, region=False)
    assert backbone_only.backbone == "swin_test" and backbone_only.geometry is None


def test_a_differing_setting_is_refused_with_its_flag(tmp_path):
    save_stage1(tmp_path / "s1.ckpt", num_heads=4)
    with pytest.raises(ValueError, match="num_heads=4.*--model.encoder.num_heads 4"):
        adopt_stage1_settings(tmp_path / "s1.ckpt",
                              EncoderSettings(backbone=None, num_heads=2, embed_dim=32), 64, AUS)


def test_a_finetune_checkpoint_names_its_model_and_rebuilds_without_its_sources(tmp_path):
    save_stage1(tmp_path / "s1.ckpt")
    module = HiVAFinetuner(aus=["AU12"], image_size=64, encoder=dict(embed_dim=32),
                           pretrained=str(tmp_path / "s1.ckpt"))
    meta = finetune_meta(module.model_config, module.au_numbers, module.stage1_path,
                         module.text.source)
    assert meta["model"]["encoder"]["pretrained_backbone"] is False
    assert (meta["backbone"], meta["aus"], meta["pretrained"]) == ("swin_test", [12],
                                                                   str(tmp_path / "s1.ckpt"))
    assert meta["text"]["encoder"] == "minilm"
    hparams = dict(module.hparams)
    self_contained_hparams(hparams, module.model_config["encoder"])
    assert hparams["pretrained"] is None
    assert hparams["encoder"]["backbone"] == "swin_test"  # null resolved
    rebuilt = HiVAFinetuner(**hparams)  # neither the stage-1 file nor ImageNet weights read
    assert rebuilt.model_config == module.model_config
