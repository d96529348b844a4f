"""Masked-pixel loss: the mask hides whole blocks at the asked ratio, only hidden pixels count,
targets are standardised per patch, and a tiny decoder learns to fill the holes."""

import pytest
import torch

from aukit.losses.masked_pixels import block_mask, masked_pixel_loss, normalise_patches


def test_block_mask_hides_whole_blocks_at_the_ratio():
    torch.manual_seed(0)
    mask = block_mask(5, (64, 32), 8, 0.5)
    assert mask.shape == (5, 64, 32) and mask.dtype == torch.bool
    blocks = mask.view(5, 8, 8, 4, 8).permute(0, 1, 3, 2, 4)  # [B, gh, gw, 8, 8]
    assert (blocks.all(-1).all(-1) == blocks.any(-1).any(-1)).all()  # all or nothing per block
    assert (blocks[..., 0, 0].flatten(1).sum(1) == 16).all()  # half of 32 blocks, every image
    assert not torch.equal(mask[0], mask[1])  # each image its own blocks
    assert block_mask(2, (16, 16), 8, 0.01).flatten(1).any(1).all()  # at least one block
    assert (~block_mask(2, (16, 16), 8, 0.99)).flatten(1).any(1).all()  # never every block


@pytest.mark.parametrize("size,block,ratio,message", [
    ((64, 64), 12, 0.5, "must divide the image size"),
    ((64, 64), 0, 0.5, "must divide the image size"),
    ((64, 64), 8, 1.0, r"mask ratio must be in \(0, 1\)"),
])
def test_bad_mask_settings_are_explained(size, block, ratio, message):
    with pytest.raises(ValueError, match=message):
        block_mask(1, size, block, ratio)


def test_patch_standardisation():
    images = torch.randn(2, 3, 16, 16) * 3 + 5
    out = normalise_patches(images, 4).view(2, 3, 4, 4, 4, 4).permute(0, 1, 2, 4, 3, 5)
    out = out.flatten(-2)  # [B, C, 4, 4, 16 pixels of one patch]
    assert torch.allclose(out.mean(-1), torch.zeros(()), atol=1e-5)
    assert torch.allclose(out.std(-1, unbiased=False), torch.ones(()), atol=1e-3)


def test_only_hidden_pixels_count_and_the_value_is_their_mean_error():
    torch.manual_seed(0)
    images, predicted = torch.randn(2, 3, 16, 16), torch.randn(2, 3, 16, 16)
    mask = block_mask(2, (16, 16), 4, 0.5)
    loss = masked_pixel_loss(predicted, images, mask)
    expected = (predicted - images).abs().permute(1, 0, 2, 3)[:, mask].mean()
    assert torch.allclose(loss, expected)
    changed = predicted.masked_fill(~mask[:, None], 100.0)  # visible pixels: no effect
    assert torch.allclose(masked_pixel_loss(changed, images, mask), loss)
    target = normalise_patches(images, 4)
    assert masked_pixel_loss(target, images, mask, patch=4) < 1e-6
    with pytest.raises(ValueError, match="shape mismatch"):
        masked_pixel_loss(predicted, images, mask[:, :8])


def test_a_tiny_convolution_learns_to_fill_the_holes():
    torch.manual_seed(0)
    # smooth images: a hidden pixel is predictable from its visible neighbours
    images = torch.nn.functional.interpolate(torch.randn(16, 1, 4, 4), size=32, mode="bilinear")
    net = torch.nn.Conv2d(1, 1, 9, padding=4)
    opt = torch.optim.Adam(net.parameters(), 1e-2)
    losses = []
    for _ in range(150):
        mask = block_mask(16, (32, 32), 4, 0.3)
        loss = masked_pixel_loss(net(images.masked_fill(mask[:, None], 0.0)), images, mask)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
