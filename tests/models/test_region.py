import torch
import torch.nn.functional as F

from aukit.models.region import AURegionEncoder, RegionBlock


def _inputs(b=2, n=16, d=24, a=3):
    tokens = torch.randn(b, n, d, requires_grad=True)
    maps = torch.rand(b, a, n)
    return tokens, maps


def test_shapes_and_gradients():
    encoder = AURegionEncoder(24, 32, 3, num_heads=4, depth=2)
    tokens, maps = _inputs()
    out = encoder(tokens, maps)
    assert out.shape == (2, 3, 32)
    out.square().sum().backward()
    assert tokens.grad is not None and torch.isfinite(tokens.grad).all()
    assert all(p.grad is not None for p in encoder.parameters())


def test_a_feature_depends_on_its_region_much_more_than_elsewhere():
    torch.manual_seed(0)
    encoder = AURegionEncoder(8, 16, 2, num_heads=2).eval()
    tokens = torch.randn(1, 10, 8)
    maps = torch.full((1, 2, 10), 1e-6)
    maps[0, 0, :5] = 1.0  # AU 0 looks at tokens 0-4, AU 1 at tokens 5-9
    maps[0, 1, 5:] = 1.0
    base = encoder(tokens, maps)
    changed = tokens.clone()
    changed[0, 7] += 5.0  # inside AU 1's region only
    delta = (encoder(changed, maps) - base).abs().sum(-1)[0]
    assert delta[1] > 20 * delta[0]


def test_pooling_without_bias_still_uses_the_maps():
    encoder = AURegionEncoder(8, 16, 2, num_heads=2, attention_bias=False).eval()
    tokens = torch.randn(1, 10, 8)
    maps = torch.zeros(1, 2, 10)
    maps[0, 0, 0] = maps[0, 1, 9] = 1.0
    out = encoder(tokens, maps)
    assert not torch.allclose(out[0, 0], out[0, 1])


def test_region_attention_equals_sdpa_and_stays_finite_for_very_negative_logits():
    torch.manual_seed(0)
    block = RegionBlock(32, num_heads=4)
    queries, tokens = torch.randn(3, 5, 32), torch.randn(3, 64, 32)
    bias = torch.rand(3, 5, 64).clamp_min(1e-4).log()
    b, a, e = queries.shape
    q = block.q(block.norm_q(queries)).view(b, a, 4, 8).transpose(1, 2)
    k, v = block.kv(block.norm_kv(tokens)).view(b, -1, 2, 4, 8).permute(2, 0, 3, 1, 4)
    reference = F.scaled_dot_product_attention(q, k, v, attn_mask=bias.unsqueeze(1))
    reference = queries + block.out(reference.transpose(1, 2).reshape(b, a, e))
    reference = reference + block.mlp(block.norm_mlp(reference))
    torch.testing.assert_close(block(queries, tokens, bias), reference, atol=1e-5, rtol=1e-5)
    # every logit of a row far below ln(FLT_MIN): where SDPA's cuDNN backward gave NaN dq
    with torch.no_grad():
        block.q.weight.mul_(40.0)
        block.kv.weight[:32].mul_(-40.0)
    queries.requires_grad_(True)
    block(queries, tokens, bias - 100.0).sum().backward()
    assert torch.isfinite(queries.grad).all()
    assert all(torch.isfinite(p.grad).all() for p in block.parameters())


def test_roi_tokens_sample_a_window_around_each_map_centre_in_order():
    from aukit.models.region import roi_tokens

    side = 8
    ys, xs = torch.meshgrid(torch.arange(side, dtype=torch.float32),
                            torch.arange(side, dtype=torch.float32), indexing="ij")
    tokens = torch.stack([xs.flatten(), ys.flatten()], -1)[None]  # [1, 64, 2]: (column, row)
    maps = torch.zeros(1, 2, side * side)
    maps[0, 0, 2 * side + 3] = 1.0  # AU 0 centred on row 2, column 3
    maps[0, 1, 5 * side + 4] = maps[0, 1, 5 * side + 6] = 0.5  # AU 1: between columns 4 and 6
    window = roi_tokens(tokens, maps, size=3, extent=0.25).reshape(1, 2, 3, 3, 2)
    # extent 0.25 of the image = 2 tokens of 8: samples at -1, 0, +1 token around the centre
    assert torch.allclose(window[0, 0, 1, 1], torch.tensor([3.0, 2.0]))
    assert torch.allclose(window[0, 0, 0, 0], torch.tensor([2.0, 1.0]))  # up-left first
    assert torch.allclose(window[0, 0, 2, 1], torch.tensor([3.0, 3.0]))  # rows, then columns
    assert torch.allclose(window[0, 1, 1, 1], torch.tensor([5.0, 5.0]))


def test_roi_pooling_keeps_the_layout_that_map_pooling_averages_away():
    torch.manual_seed(0)
    maps = torch.zeros(2, 1, 64)
    maps[:, 0, [27, 28]] = 0.5  # one AU centred between two tokens
    tokens, left, right = torch.zeros(2, 64, 16), torch.randn(16), torch.randn(16)
    tokens[0, 27], tokens[0, 28] = left, right  # the same two tokens, swapped between the faces
    tokens[1, 27], tokens[1, 28] = right, left
    for roi_size, same in ((0, True), (3, False)):
        encoder = AURegionEncoder(16, 16, 1, num_heads=2, depth=0, roi_size=roi_size,
                                  roi_extent=0.25)
        features = encoder(tokens, maps)
        assert torch.allclose(features[0], features[1], atol=1e-5) == same
