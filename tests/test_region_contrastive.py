import math

import pytest
import torch
import torch.nn.functional as F

from aukit.losses.region_contrastive import (
    global_contrastive_loss,
    other_subject_bias,
    region_contrastive_loss,
)
from aukit.utils.distributed import gather_with_grad, rank, world_size

B, A, D = 6, 3, 16


def naive_loss(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> torch.Tensor:
    """One InfoNCE per AU and direction, with F.cross_entropy, averaged."""
    z1, z2 = F.normalize(z1, dim=-1), F.normalize(z2, dim=-1)
    targets = torch.arange(z1.shape[0])
    losses = []
    for k in range(z1.shape[1]):
        logits = z1[:, k] @ z2[:, k].T / temperature
        losses += [F.cross_entropy(logits, targets), F.cross_entropy(logits.T, targets)]
    return torch.stack(losses).mean()


def test_matches_naive_per_au_loop():
    z1, z2 = torch.randn(B, A, D), torch.randn(B, A, D)
    torch.testing.assert_close(region_contrastive_loss(z1, z2, 0.2), naive_loss(z1, z2, 0.2))
    g1, g2 = z1[:, 0], z2[:, 0]
    torch.testing.assert_close(global_contrastive_loss(g1, g2, 0.2),
                               naive_loss(g1[:, None], g2[:, None], 0.2))


def test_aligned_is_low_and_random_is_log_b():
    z = torch.randn(32, A, 512)
    assert region_contrastive_loss(z, z + 0.01 * torch.randn_like(z)) < 0.01
    random_loss = region_contrastive_loss(z, torch.randn_like(z))
    assert abs(float(random_loss) - math.log(32)) < 0.5


def test_decreases_under_sgd_with_finite_gradients():
    z1 = torch.randn(B, A, D, requires_grad=True)
    z2 = torch.randn(B, A, D, requires_grad=True)
    optimiser = torch.optim.SGD([z1, z2], lr=1.0)
    losses = []
    for _ in range(10):
        optimiser.zero_grad()
        loss = region_contrastive_loss(z1, z2)
        loss.backward()
        assert torch.isfinite(z1.grad).all() and torch.isfinite(z2.grad).all()
        optimiser.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


def test_bad_input_is_explained():
    with pytest.raises(ValueError, match=r"\[B, A, D\]"):
        region_contrastive_loss(torch.randn(B, D), torch.randn(B, D))
    with pytest.raises(ValueError, match="temperature"):
        region_contrastive_loss(torch.randn(B, A, D), torch.randn(B, A, D), temperature=0)


def test_gather_is_identity_without_process_group():
    x = torch.randn(B, D)
    assert gather_with_grad(x) is x and rank() == 0 and world_size() == 1


def test_other_subject_negatives_dropped_or_down_weighted():
    torch.manual_seed(0)
    z1, z2 = torch.randn(6, 3, 8), torch.randn(6, 3, 8)
    subjects = ["a", "a", "b", "b", "b", "c"]
    assert other_subject_bias(subjects, 1.0, 6) is None
    dropped = region_contrastive_loss(z1, z2, 0.1, key_bias=other_subject_bias(subjects, 0.0, 6))
    # by hand: each face against its own subject's faces only (c alone: its loss is 0)
    q1, q2 = F.normalize(z1, dim=-1), F.normalize(z2, dim=-1)
    groups = [[0, 1], [0, 1], [2, 3, 4], [2, 3, 4], [2, 3, 4], [5]]
    terms = []
    for a in range(3):
        for i, keys in enumerate(groups):
            for q, k in ((q1, q2), (q2, q1)):
                logits = q[i, a] @ k[keys, a].T / 0.1
                terms.append(-F.log_softmax(logits, 0)[keys.index(i)])
    assert torch.allclose(dropped, torch.stack(terms).mean(), atol=1e-5)
    half = other_subject_bias(subjects, 0.5, 6)
    assert half[0, 1] == 0 and half[0, 2] == pytest.approx(math.log(0.5))
    weighted = region_contrastive_loss(z1, z2, 0.1, key_bias=half)
    full = region_contrastive_loss(z1, z2, 0.1)
    assert dropped < weighted < full  # fewer / lighter negatives, a lower loss
    with pytest.raises(ValueError, match=r"must be in \[0, 1\]"):
        other_subject_bias(subjects, 1.5, 6)
