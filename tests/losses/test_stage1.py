"""The stage-1 objective: its switches, what each loss needs, and the image-expression loss (each
AU feature predicts its face's expression geometry, the geometry loss's person-free target)."""

import pytest
import torch

from aukit.data.synthau import SynthAU
from aukit.losses.geometry import expression_geometry, geometry_loss
from aukit.losses.stage1 import Stage1Losses, Stage1Objective
from aukit.models.region import SHAPE_SCALE
from pretrain.module import RegionRelationPretrainer

EXPRESSION = dict(region_weight=0, relation_weight=0, expression_weight=1.0)
ENCODER = dict(embed_dim=32)


@pytest.fixture(scope="module")
def faces() -> torch.Tensor:
    """SynthAU landmarks [8, 68, 2] at 64 px: two people x 4 expressions."""
    synth = SynthAU(image_size=128)
    return torch.stack([torch.from_numpy(synth.sample(s, i)["landmarks"]) / 2
                        for s in (130, 131) for i in range(4)])


def _batch(faces: torch.Tensor, views: int = 1) -> dict:
    return {"image": torch.randn(8, views, 3, 64, 64),
            "landmarks": faces[:, None].expand(-1, views, -1, -1).clone(),
            "subject": ["S1"] * 4 + ["S2"] * 4}


def test_the_expression_loss_scores_each_au_head_against_the_person_free_target(faces):
    torch.manual_seed(0)
    module = RegionRelationPretrainer(aus="bp4d", image_size=64, encoder=ENCODER,
                                      losses=EXPRESSION)
    module.eval()  # no dropout: the reference's features are the same
    batch = _batch(faces)
    with torch.no_grad():  # a head that is not zero, so the prediction is the features' own
        module.objective.expression_head.normal_(0, 0.05)
    losses = module.objective(module.encoder.features, batch["image"], batch["landmarks"],
                              batch["subject"])
    _, features = module.encoder.features(batch["image"][:, 0], faces)
    predicted = torch.einsum("bae,aek->bak", features, module.objective.expression_head)
    target = SHAPE_SCALE * expression_geometry(faces, batch["subject"]).flatten(1)
    reference = geometry_loss(predicted, target[:, None].expand_as(predicted))
    torch.testing.assert_close(losses["expression"], reference)
    assert set(losses) == {"expression", "loss"}


def test_the_expression_loss_trains_the_region_encoder_and_starts_at_one(faces):
    torch.manual_seed(0)
    module = RegionRelationPretrainer(aus="bp4d", image_size=64, encoder=ENCODER,
                                      losses=EXPRESSION)
    assert module.objective.reads_au_features  # the region encoder is not frozen
    assert all(p.requires_grad for p in module.encoder.region.parameters())
    batch = _batch(faces)
    loss = module.training_step(batch, 0)
    assert torch.isclose(loss, torch.tensor(1.0))  # the zero head explains nothing yet
    loss.backward()
    assert module.objective.expression_head.grad.abs().sum() > 0
    # the head's gradient reaches the features on the next step
    with torch.no_grad():
        module.objective.expression_head.normal_(0, 0.05)
    module.zero_grad()
    module.training_step(batch, 0).backward()
    assert module.encoder.region.au_queries.grad.abs().sum() > 0


def test_a_head_on_features_that_hold_the_expression_learns_it(faces):
    """Learning: AU features that are a linear image of the target let the head explain it."""
    torch.manual_seed(0)
    objective = Stage1Objective(12, 16, 32, (4, 4), 64, Stage1Losses(**EXPRESSION))
    subjects = ["S1"] * 4 + ["S2"] * 4
    target = SHAPE_SCALE * expression_geometry(faces, subjects).flatten(1)  # [8, 136]
    mix = torch.randn(136, 32) / 136 ** 0.5

    def encode(images, landmarks):
        return torch.zeros(len(images), 16, 16), (target @ mix)[:, None].expand(-1, 12, -1)

    optimiser = torch.optim.Adam(objective.parameters(), lr=0.05)
    images = torch.zeros(8, 1, 3, 64, 64)
    first = None
    for _ in range(200):
        loss = objective(encode, images, faces[:, None], subjects)["expression"]
        first = float(loss) if first is None else first
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    assert first == pytest.approx(1.0) and float(loss) < 0.1


def test_the_expression_loss_needs_person_ids_and_no_geometry_branch(faces):
    batch = _batch(faces)
    del batch["subject"]
    module = RegionRelationPretrainer(aus="bp4d", image_size=64, encoder=ENCODER,
                                      losses=EXPRESSION)
    with pytest.raises(ValueError, match="expression loss .* needs each face's person id"):
        module.training_step(batch, 0)
    assert any("expression_weight 0" in n for n in module.objective.person_id_losses)
    branch = RegionRelationPretrainer(aus="bp4d", image_size=64,
                                      encoder=dict(ENCODER, geometry=True), losses=EXPRESSION)
    with pytest.raises(ValueError, match="--model.encoder.geometry false"):
        branch.training_step(_batch(faces), 0)


def test_a_stage1_with_every_loss_off_is_refused():
    with pytest.raises(ValueError, match="expression_weight"):
        Stage1Objective(12, 16, 32, (4, 4), 64,
                        Stage1Losses(region_weight=0, relation_weight=0, expression_weight=0))
