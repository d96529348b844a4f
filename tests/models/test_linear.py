"""The plain baselines over the same AUEncoder: shapes, gradients, and what each ignores."""

import torch

from aukit.au_maps import canonical_landmarks
from aukit.models.linear import LinearAUClassifier, RegionAUClassifier

ENCODER = {"backbone": "swin_test", "image_size": 64, "embed_dim": 32}
AUS = [1, 2, 12]


def test_the_linear_baseline_reads_the_image_only():
    torch.manual_seed(0)
    model = LinearAUClassifier(AUS, ENCODER).eval()
    images = torch.randn(2, 3, 64, 64, requires_grad=True)
    out = model(images, torch.zeros(2, 68, 2), None, None, None)
    assert set(out) == {"logits"} and out["logits"].shape == (2, 3)
    moved = model(images, torch.full((2, 68, 2), 30.0))  # other landmarks: the same logits
    torch.testing.assert_close(out["logits"], moved["logits"])
    out["logits"].sum().backward()
    assert images.grad.abs().sum() > 0 and model.encoder.region is None


def test_the_region_baseline_gives_per_au_logits_features_and_normalised_maps():
    torch.manual_seed(0)
    model = RegionAUClassifier(AUS, ENCODER, dropout=0.0).eval()
    landmarks = torch.from_numpy(canonical_landmarks((64, 64)))[None].expand(2, -1, -1)
    out = model(torch.randn(2, 3, 64, 64), landmarks)
    assert out["logits"].shape == (2, 3) and out["au_features"].shape == (2, 3, 32)
    maps = out["act_maps"]
    assert maps.shape[:2] == (2, 3)
    torch.testing.assert_close(maps.flatten(2).sum(-1), torch.ones(2, 3))
    # None stands for the template
    torch.testing.assert_close(model(torch.zeros(1, 3, 64, 64), None)["logits"],
                               model(torch.zeros(1, 3, 64, 64), landmarks[:1])["logits"])
