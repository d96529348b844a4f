import math

import pytest
import torch
import torch.nn.functional as F

from aukit.losses.region_contrastive import (
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


def test_person_negatives_are_one_loss_per_person():
    """With ``groups``, each face competes only with its own person's faces: the loss is the
    mean of the per-person losses (equal-sized groups), whatever the other people look like."""
    z1, z2 = torch.randn(8, A, D), torch.randn(8, A, D)
    groups = torch.tensor([0, 1, 0, 1, 0, 1, 0, 1])
    per_person = [region_contrastive_loss(z1[groups == g], z2[groups == g], 0.2) for g in (0, 1)]
    loss = region_contrastive_loss(z1, z2, 0.2, groups=groups)
    torch.testing.assert_close(loss, torch.stack(per_person).mean())
    # embeddings that hold identity alone: the batch loss falls from log 8 to about log 4 (the
    # other people are told apart), the same-person loss stays at chance, log 4
    identity = F.one_hot(groups, D).float()[:, None].expand(8, A, D)
    assert region_contrastive_loss(identity, identity, 0.05) < math.log(8) - 0.6
    torch.testing.assert_close(region_contrastive_loss(identity, identity, 0.05, groups=groups),
                               torch.tensor(math.log(4)))
