"""The stage-2 objective: BCE, plus deep supervision and alignment where they are on, weighed."""

import torch

from aukit.losses.alignment import state_alignment_loss
from aukit.losses.au_bce import au_bce_loss
from aukit.losses.stage2 import FinetuneLosses, finetune_loss

B, A, E = 6, 4, 8


def _outputs(text: bool = True, region: bool = True) -> dict:
    torch.manual_seed(0)
    out = {"logits": torch.randn(B, A, requires_grad=True)}
    if region:
        out["region_logits"] = torch.randn(B, A)
    if text:
        out["au_features"], out["text_anchors"] = torch.randn(B, A, E), torch.randn(A, E)
    return out


def test_the_terms_add_up_with_their_weights():
    out, labels = _outputs(), torch.randint(0, 2, (B, A))
    mask = torch.rand(B, A) > 0.2
    weights, pos = torch.rand(A) + 0.5, torch.rand(A) + 1
    losses = FinetuneLosses(region_supervision=0.5, alignment_weight=0.2)
    terms = finetune_loss(out, labels, mask, losses, weights, pos)
    bce = au_bce_loss(out["logits"], labels, mask, weights, pos)
    region = au_bce_loss(out["region_logits"], labels, mask, weights, pos)
    align = state_alignment_loss(out["au_features"], out["text_anchors"], labels, mask)
    torch.testing.assert_close(terms["bce"], bce)
    torch.testing.assert_close(terms["region_bce"], region)
    torch.testing.assert_close(terms["align"], align)
    torch.testing.assert_close(terms["loss"], bce + 0.5 * region + 0.2 * align)
    terms["loss"].backward()
    assert out["logits"].grad.abs().sum() > 0


def test_a_term_is_off_at_weight_zero_or_without_its_outputs():
    labels, mask = torch.randint(0, 2, (B, A)), torch.ones(B, A, dtype=torch.bool)
    off = FinetuneLosses(region_supervision=0.0, alignment_weight=0.0)
    assert set(finetune_loss(_outputs(), labels, mask, off)) == {"bce", "loss"}
    bare = finetune_loss(_outputs(text=False, region=False), labels, mask, FinetuneLosses())
    assert set(bare) == {"bce", "loss"}
    torch.testing.assert_close(bare["loss"], bare["bce"])
