"""Masked, weighted per-AU BCE: agreement with torch, unknown labels ignored, bad inputs
explained."""


import pytest
import torch
import torch.nn.functional as F

from aukit.losses.au_bce import au_bce_loss

B, A, E = 4, 5, 8


def test_bce_matches_torch_with_mask_and_weights():
    logits = torch.randn(B, A)
    labels = torch.randint(0, 2, (B, A)).float()
    labels[0, 1] = 9  # BP4D "unknown"
    mask = labels != 9
    mask[2, 3] = False
    weights = torch.rand(A) + 0.5
    known = mask.nonzero(as_tuple=True)
    per_element = F.binary_cross_entropy_with_logits(
        logits[known], labels[known], weight=weights.expand(B, A)[known], reduction="none")
    torch.testing.assert_close(au_bce_loss(logits, labels, mask, weights), per_element.mean())
    plain = F.binary_cross_entropy_with_logits(logits[known], labels[known])
    torch.testing.assert_close(au_bce_loss(logits, labels, mask), plain)


def test_bce_without_mask_is_the_mean_and_unknowns_carry_no_gradient():
    logits = torch.randn(B, A, requires_grad=True)
    labels = torch.randint(0, 2, (B, A))
    torch.testing.assert_close(au_bce_loss(logits, labels),
                               F.binary_cross_entropy_with_logits(logits, labels.float()))
    mask = torch.ones(B, A, dtype=torch.bool)
    mask[1] = False
    au_bce_loss(logits, labels, mask).backward()
    assert (logits.grad[1] == 0).all() and (logits.grad[0] != 0).all()


def test_bce_with_nothing_known_is_zero_and_differentiable():
    logits = torch.randn(B, A, requires_grad=True)
    loss = au_bce_loss(logits, torch.full((B, A), 9), torch.zeros(B, A, dtype=torch.bool))
    loss.backward()
    assert loss.item() == 0 and torch.isfinite(logits.grad).all()


@pytest.mark.parametrize("kwargs, message", [
    (dict(labels=torch.zeros(B, A + 1)), "\\[B, A\\]"),
    (dict(mask=torch.ones(B, A)), "bool"),
    (dict(class_weights=torch.ones(A + 1)), "class_weights"),
])
def test_bce_bad_inputs_are_explained(kwargs, message):
    args = dict(logits=torch.randn(B, A), labels=torch.zeros(B, A)) | kwargs
    with pytest.raises(ValueError, match=message):
        au_bce_loss(**args)
