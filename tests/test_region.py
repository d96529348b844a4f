import torch

from aukit.models.region import AURegionEncoder


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
