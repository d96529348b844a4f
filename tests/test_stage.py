"""The base of both stages: non-finite losses and gradients stop training with the fix, image
batches are normalised on the device, and the other stage's checkpoints are refused."""

from types import SimpleNamespace

import pytest
import torch

from aukit.checkpoint import META_KEY
from aukit.data.transforms import normalize_images
from aukit.stage import StageModule
from pretrain.module import RegionRelationPretrainer


class Tiny(StageModule):
    stage = "finetune"

    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(3))


def test_a_non_finite_loss_stops_before_the_backward_pass():
    module = Tiny()
    module.on_before_backward(torch.tensor(1.0))  # finite: no complaint
    with pytest.raises(FloatingPointError, match="finetune loss became nan at step 0.*lower "
                                                 "--model.optim.lr"):
        module.on_before_backward(torch.tensor(float("nan")))


def test_a_non_finite_gradient_is_refused_and_named():
    module = RegionRelationPretrainer(aus=[1, 2], image_size=64,
                                      encoder=dict(backbone="swin_test", embed_dim=16),
                                      losses=dict(proj_dim=8, relation="ot"))
    for p in module.parameters():
        p.grad = torch.zeros_like(p)
    module.on_before_optimizer_step(None)  # finite: no complaint
    module.objective.au_mass.weight.grad[0, 0] = float("inf")
    with pytest.raises(FloatingPointError, match=r"non-finite gradients at step 0 in 1 "
                                                 r"parameters: objective.au_mass.weight;"):
        module.on_before_optimizer_step(None)
    # fp16 mixed precision: overflowing steps are the grad scaler's to skip, not an error
    module._trainer = SimpleNamespace(precision_plugin=SimpleNamespace(scaler=object()))
    module.on_before_optimizer_step(None)


def test_uint8_batches_are_normalised_in_every_part_of_a_combined_batch():
    images = torch.randint(0, 256, (2, 3, 8, 8), dtype=torch.uint8)
    batch = {"labelled": {"image": images.clone()}, "unlabeled": {"image": images.clone()}}
    out = Tiny().on_after_batch_transfer(batch, 0)
    for part in out.values():
        torch.testing.assert_close(part["image"], normalize_images(images))
    floats = {"image": torch.randn(2, 3, 8, 8)}
    assert Tiny().on_after_batch_transfer(dict(floats), 0)["image"] is floats["image"]


def test_the_other_stages_checkpoint_is_refused_with_the_right_flag():
    with pytest.raises(ValueError, match="cannot load a 'pretrain' checkpoint into the finetune "
                                         "stage.*--model.pretrained, not --ckpt_path"):
        Tiny().on_load_checkpoint({META_KEY: {"stage": "pretrain"}})
    Tiny().on_load_checkpoint({META_KEY: {"stage": "finetune"}})
