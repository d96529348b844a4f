"""The state alignment loss: agreement with a loop, it needs the face, it learns, and it is
zero without pairs."""

import math

import pytest
import torch
import torch.nn.functional as F

from aukit.losses.alignment import state_alignment_loss

B, A, E = 4, 5, 8


def test_state_alignment_matches_a_loop():
    torch.manual_seed(0)
    features, anchors = torch.randn(B, A, E), torch.randn(A, E)
    labels = (torch.rand(B, A) > 0.5).float()
    mask = torch.rand(B, A) > 0.2
    scores = (F.normalize(features, dim=-1) * F.normalize(anchors, dim=-1)).sum(-1) / 0.1
    terms = []
    for k in range(A):
        negatives = scores[(labels[:, k] == 0) & mask[:, k], k]
        for b in range(B):
            if labels[b, k] == 1 and mask[b, k] and len(negatives):
                logits = torch.cat([scores[b, k:k + 1], negatives])
                terms.append(-torch.log_softmax(logits, 0)[0])
    expected = torch.stack(terms).mean()
    torch.testing.assert_close(state_alignment_loss(features, anchors, labels, mask), expected)


def test_state_alignment_cannot_be_solved_without_looking_at_the_face():
    """A per-AU constant feature (what a learned query gives when it ignores the image) sits at
    log(1 + #absent) for every AU, however well it matches the anchor; features that follow the
    labels go far below."""
    torch.manual_seed(1)
    anchors = torch.randn(A, E)
    labels = torch.zeros(B, A)
    labels[: B // 2] = 1
    constant = anchors.expand(B, A, E).clone()
    stated = torch.where(labels[..., None] == 1, anchors, -anchors)
    floor = math.log(1 + B - B // 2)
    assert state_alignment_loss(constant, anchors, labels) == pytest.approx(floor, rel=1e-5)
    assert state_alignment_loss(stated, anchors, labels) < 1e-3


def test_state_alignment_decreases_over_a_few_steps():
    torch.manual_seed(2)
    features = torch.randn(B, A, E, requires_grad=True)
    anchors, labels = torch.randn(A, E), (torch.rand(B, A) > 0.5).float()
    optimizer = torch.optim.SGD([features], lr=1.0)
    losses = []
    for _ in range(20):
        loss = state_alignment_loss(features, anchors, labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


def test_state_alignment_without_pairs_is_zero_and_differentiable():
    features = torch.randn(B, A, E, requires_grad=True)
    loss = state_alignment_loss(features, torch.randn(A, E), torch.ones(B, A))  # no absent face
    loss.backward()
    assert loss.item() == 0.0 and features.grad is not None
    with pytest.raises(ValueError, match="temperature"):
        state_alignment_loss(features, torch.randn(A, E), torch.ones(B, A), None, 0.0)
