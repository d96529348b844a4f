"""DescriptionBuffers: a model's description features as buffers, and each step's text."""

import pytest
import torch

from aukit.text.features import DescriptionBuffers, TextFeatures

A, M, L, D = 3, 5, 4, 8


def features() -> TextFeatures:
    desc_mask = torch.ones(A, M, dtype=torch.bool)
    desc_mask[0, 3:] = False  # AU 0 has 3 real descriptions
    return TextFeatures(torch.randn(A, M, L, D), torch.ones(A, M, L, dtype=torch.bool),
                        torch.randn(A, M, D), desc_mask)


def test_buffers_are_never_saved_and_give_all_or_a_seeded_draw_of_descriptions():
    buffers = DescriptionBuffers(A, D)
    assert buffers.features is None and buffers.inputs() == (None, None, None)
    text = features()
    buffers.set(text)
    assert buffers.state_dict() == {}  # recomputed at set-up, not stored in checkpoints
    tokens, mask, anchors = buffers.inputs()  # evaluation: every description
    assert tokens.shape == (A, M * L, D) and int(mask[0].sum()) == 3 * L
    torch.testing.assert_close(anchors[0], text.sentence[0, :3].mean(0))
    drawn = buffers.inputs(per_step=2, step=7)
    assert drawn[0].shape == (A, 2 * L, D)
    assert torch.equal(drawn[0], buffers.inputs(per_step=2, step=7)[0])  # seeded by the step
    assert any(not torch.equal(drawn[0], buffers.inputs(per_step=2, step=s)[0])
               for s in range(8, 12))
    buffers.set(None)
    assert buffers.features is None


def test_features_of_another_model_are_refused():
    with pytest.raises(ValueError, match="A=4 AUs, D=8"):
        DescriptionBuffers(4, D).set(features())
    with pytest.raises(ValueError, match="A=3 AUs, D=16"):
        DescriptionBuffers(A, 16).set(features())
