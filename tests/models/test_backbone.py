import pytest
import torch

from aukit.models.backbone import ConvStem, SwinBackbone


@pytest.mark.parametrize("image_size,grid", [(64, (4, 4)), (128, (8, 8))])
def test_tokens_shape_and_grid(image_size, grid):
    backbone = SwinBackbone("swin_test", image_size)
    tokens = backbone(torch.randn(2, 3, image_size, image_size))
    assert backbone.grid == grid
    assert tokens.shape == (2, grid[0] * grid[1], backbone.out_dim)
    assert torch.isfinite(tokens).all()


def test_tokens_are_row_major():
    backbone = SwinBackbone("swin_test", 64).eval()
    images = torch.randn(1, 3, 64, 64)
    stage_map = backbone.model.forward_intermediates(images, indices=[2],
                                                     intermediates_only=True)[0]
    tokens = backbone(images)
    assert torch.allclose(tokens[0, 1], stage_map[0, :, 0, 1])  # row 0, column 1


def test_stages_after_the_feature_stage_are_pruned():
    backbone = SwinBackbone("swin_test", 64, feature_stage=2)
    assert len(backbone.model.layers) == 2
    tokens = backbone(torch.randn(1, 3, 64, 64))
    tokens.sum().backward()
    assert all(p.grad is not None for p in backbone.parameters() if p.requires_grad)


def test_unknown_backbone_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown backbone 'resnet50'"):
        SwinBackbone("resnet50")


def test_image_size_the_window_does_not_divide():
    with pytest.raises(ValueError, match="does not fit backbone 'swin_test'.*such as"):
        SwinBackbone("swin_test", 100)


def test_pretrained_offline_fails_fast_with_a_hint(monkeypatch):
    import timm

    def offline(*args, **kwargs):
        raise OSError("cannot reach the hub")

    monkeypatch.setattr(timm, "create_model", offline)
    with pytest.raises(OSError, match="--model.encoder.pretrained_backbone false"):
        SwinBackbone("swin_tiny", 224, pretrained=True)


def test_conv_stem_is_the_default_for_swin_test_and_a_switch():
    conv, patchify = SwinBackbone("swin_test", 64), SwinBackbone("swin_test", 64, conv_stem=False)
    assert conv.conv_stem and not patchify.conv_stem
    assert isinstance(conv.model.patch_embed, ConvStem)
    assert not SwinBackbone("swin_tiny", 224).conv_stem  # ImageNet-sized presets keep patchify
    images = torch.randn(2, 3, 64, 64)
    tokens = conv(images)
    assert tokens.shape == patchify(images).shape == (2, 16, conv.out_dim)
    tokens.sum().backward()
    assert all(p.grad is not None for p in conv.model.patch_embed.parameters())


def test_conv_stem_refuses_imagenet_weights():
    with pytest.raises(ValueError, match="--model.encoder.conv_stem false"):
        SwinBackbone("swin_tiny", 224, pretrained=True, conv_stem=True)
