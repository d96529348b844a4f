"""Expression-geometry loss: the face frame ignores the camera, the target keeps the expression
and drops the person, a flipped view gets the mirrored target, and the objective trains on it
(by the optimiser, or solved in closed form, as sklearn's ridge regression solves it)."""


import numpy as np
import pytest
import torch
from sklearn.linear_model import Ridge

from aukit.data.synthau import SynthAU
from aukit.data.transforms import hflip_face
from aukit.losses.geometry import (
    RIDGE,
    LeastSquaresFit,
    expression_geometry,
    geometry_loss,
    mirror_shape,
    normalise_shape,
)
from aukit.models.region import SHAPE_SCALE
from aukit.optim import parameter_groups
from pretrain.module import RegionRelationPretrainer


def _faces(subject: int, count: int) -> torch.Tensor:
    """SynthAU landmarks [count, 68, 2] of one subject's faces (no rendering needed)."""
    synth = SynthAU(image_size=128)
    return torch.stack([torch.from_numpy(synth.sample(subject, i)["landmarks"])
                        for i in range(count)])


@pytest.fixture(scope="module")
def faces() -> torch.Tensor:
    return torch.cat([_faces(130, 4), _faces(131, 4)])  # two people x 4 expressions


def test_the_target_drops_the_person_and_keeps_the_expression(faces):
    groups = ["A"] * 4 + ["B"] * 4
    target = expression_geometry(faces, groups)
    assert target.shape == (8, 68, 2)
    # the symmetric part of a person's targets averages to nothing: what is left is each
    # expression (and the pose and asymmetry of each face)
    symmetric = (target + mirror_shape(target)) / 2
    assert symmetric[:4].mean(0).abs().max() < 1e-5 and symmetric[:4].abs().max() > 0.05
    # another face shape for every person (a wider jaw, symmetric, eyes unmoved): the same target
    shape = normalise_shape(faces)
    wider = shape.clone()
    wider[:, :8, 0] -= 0.1  # jaw points 0-7 on one side, 9-16 their mirror images
    wider[:, 9:17, 0] += 0.1
    assert torch.allclose(expression_geometry(wider, groups), expression_geometry(shape, groups),
                          atol=1e-5)
    # a group's target depends only on its own faces
    assert torch.allclose(expression_geometry(faces[:4], groups[:4]), target[:4], atol=1e-5)


def test_a_flipped_view_gets_the_mirrored_target_whichever_faces_are_flipped(faces):
    groups = ["A"] * 4 + ["B"] * 4
    target = expression_geometry(faces, groups)
    _, flipped = hflip_face(torch.zeros(len(faces), 3, 128, 128), faces)
    mixed = torch.where(torch.tensor([0, 1, 0, 1, 1, 0, 0, 1]).bool()[:, None, None], flipped,
                        faces)
    mixed_target = expression_geometry(mixed, groups)
    for i, was_flipped in enumerate([0, 1, 0, 1, 1, 0, 0, 1]):
        expected = mirror_shape(target[i:i + 1])[0] if was_flipped else target[i]
        assert torch.allclose(mixed_target[i], expected, atol=1e-4)


def test_one_face_per_person_is_refused_with_the_flag(faces):
    with pytest.raises(ValueError, match="faces_per_subject >= 2"):
        expression_geometry(faces[:3], ["A", "B", "C"])
    with pytest.raises(ValueError, match="B group ids"):
        expression_geometry(faces, ["A"] * 3)


def test_the_loss_is_the_share_of_the_target_left_unexplained():
    target = torch.randn(3, 68, 2)
    assert torch.isclose(geometry_loss(torch.zeros_like(target), target), torch.tensor(1.0))
    assert geometry_loss(target, target) == 0
    assert torch.isclose(geometry_loss(target / 2, target), torch.tensor(0.25))


def test_stage1_geometry_needs_the_branch_and_subject_ids_and_feeds_the_au_features(faces):
    torch.manual_seed(0)
    batch = {"image": torch.randn(8, 1, 3, 64, 64), "landmarks": (faces / 2)[:, None]}
    kwargs = dict(aus="bp4d", image_size=64,
                  losses=dict(proj_dim=16, region_weight=0, relation_weight=0, masked_weight=1.0,
                              mask_block=8, geometry_weight=1.0))
    with pytest.raises(ValueError, match="set --model.encoder.geometry true"):
        RegionRelationPretrainer(encoder=dict(embed_dim=32), **kwargs).training_step(batch, 0)
    module = RegionRelationPretrainer(encoder=dict(embed_dim=32, geometry=True), **kwargs)
    with pytest.raises(ValueError, match="needs each face's person id"):
        module.training_step(batch, 0)
    batch["subject"] = ["S1"] * 4 + ["S2"] * 4
    module.training_step(batch, 0)
    # the branch feeds the AU features: other landmarks, other features
    tokens = torch.randn(2, 16, module.encoder.backbone.out_dim)
    maps = torch.rand(2, 12, 16)
    a = module.encoder.region(tokens, maps, (faces[[0, 0]] / 2))
    b = module.encoder.region(tokens, maps, (faces[[0, 1]] / 2))
    assert torch.equal(a[0], b[0]) and not torch.allclose(a[1], b[1])


def test_the_least_squares_fit_agrees_with_sklearn_and_adds_up_over_batches():
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(200, 10, generator=generator)
    y = x @ torch.randn(10, 4, generator=generator) + torch.randn(4, generator=generator) \
        + 0.1 * torch.randn(200, 4, generator=generator)
    whole, parts = LeastSquaresFit(10, 4), LeastSquaresFit(10, 4)
    whole.update(x, y)
    for rows in (slice(0, 50), slice(50, 120), slice(120, 200)):
        parts.update(x[rows], y[rows])
    weight, bias = whole.solve()
    for a, b in zip(parts.solve(), (weight, bias), strict=True):
        assert torch.allclose(a, b, atol=1e-5)
    # sklearn's ridge penalises the summed squared error: alpha = n * our relative penalty
    alpha = len(x) * RIDGE * x.double().var(0, unbiased=False).mean().item()
    reference = Ridge(alpha=alpha).fit(x.numpy(), y.numpy())
    assert np.allclose(weight.numpy(), reference.coef_, atol=1e-4)
    assert np.allclose(bias.numpy(), reference.intercept_, atol=1e-4)
    with pytest.raises(ValueError, match="at least two samples"):
        LeastSquaresFit(10, 4).solve()


GEOMETRY = dict(embed_dim=32, geometry=True)
MASKED_GEOMETRY = dict(region_weight=0, relation_weight=0, masked_weight=1.0,
                       geometry_weight=1.0)

def test_stage1_solves_the_geometry_map_in_closed_form_and_resumes_it(faces):
    torch.manual_seed(0)
    batch = {"image": torch.randn(8, 1, 3, 64, 64), "landmarks": (faces / 2)[:, None],
             "subject": ["S1"] * 4 + ["S2"] * 4}
    with pytest.raises(ValueError, match="no stage-1 loss trains the encoder"):
        RegionRelationPretrainer(aus="bp4d", image_size=64, encoder=GEOMETRY,
                                 losses=dict(region_weight=0, relation_weight=0,
                                             geometry_weight=1.0))
    module = RegionRelationPretrainer(aus="bp4d", image_size=64, encoder=GEOMETRY,
                                      losses=MASKED_GEOMETRY)
    geometry = module.encoder.region.geometry
    assert not any(p.requires_grad for p in geometry.parameters())  # not the optimiser's
    trainable = {id(p) for group in parameter_groups(module, 1e-3, 0.05)
                 for p in group["params"]}
    assert not trainable & {id(p) for p in geometry.parameters()}
    module.training_step(batch, 0)
    # the map now minimises the loss over the batch it has seen
    target = SHAPE_SCALE * expression_geometry(faces / 2, batch["subject"])
    assert geometry_loss(geometry(faces / 2), target) < 1e-3
    # its statistics travel in the checkpoint: a resumed module solves the same map
    resumed = RegionRelationPretrainer(aus="bp4d", image_size=64, encoder=GEOMETRY,
                                       losses=MASKED_GEOMETRY)
    resumed.load_state_dict(module.state_dict())
    for a, b in zip(resumed.objective.geometry_fit.solve(), module.objective.geometry_fit.solve(),
                    strict=True):
        assert torch.equal(a, b)
    assert torch.equal(resumed.encoder.region.geometry.project.weight, geometry.project.weight)
