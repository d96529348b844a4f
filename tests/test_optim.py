"""One weight-decay policy for both stages: the same kinds of parameters are exempt, and the
groups hold every trainable parameter exactly once."""

import pytest
import torch

from aukit.optim import no_weight_decay, parameter_groups
from finetune.module import HiVAFinetuner
from pretrain.module import RegionRelationPretrainer

SHARED = ("backbone.", "region.")  # the parts stage 1 hands over to stage 2


def kind(name: str, param: torch.Tensor) -> str:
    """What a parameter is, by its name and shape."""
    if param.ndim <= 1:
        return "bias, norm or scale"
    if "relative_position_bias_table" in name:
        return "position table"
    if name.rsplit(".", 1)[-1] in ("au_queries", "au_embedding"):
        return "learned query or embedding"
    return "weight"


def stages() -> dict[str, torch.nn.Module]:
    return {"pretrain": RegionRelationPretrainer(aus="bp4d", image_size=64,
                                                 encoder=dict(embed_dim=32),
                                                 losses=dict(proj_dim=16, relation="ot")),
            "finetune": HiVAFinetuner(aus=["AU1", "AU12"], image_size=64,
                                      encoder=dict(embed_dim=32),
                                      heads=dict(use_text=False)).model}


def test_both_stages_exempt_the_same_kinds_of_parameters():
    exempt_kinds = {}
    for stage, module in stages().items():
        exempt = no_weight_decay(module)
        kinds = {k: {kind(n, p) for n, p in module.named_parameters() if (n in exempt) == e}
                 for k, e in (("exempt", True), ("decayed", False))}
        assert kinds["exempt"] == {"bias, norm or scale", "position table",
                                   "learned query or embedding"}, stage
        assert kinds["decayed"] == {"weight"}, stage
        exempt_kinds[stage] = {n for n in exempt if n.startswith(SHARED)}
    # the parameters handed over from stage 1 are treated alike in stage 2, name by name
    assert exempt_kinds["pretrain"] == exempt_kinds["finetune"]


@pytest.mark.parametrize("architecture", ["hiva", "linear", "region", "pretrain"])
@pytest.mark.parametrize("layer_decay", [1.0, 0.75])
def test_groups_hold_every_trainable_parameter_exactly_once(architecture, layer_decay):
    if architecture == "pretrain":
        module = stages()["pretrain"]
    else:
        module = HiVAFinetuner(aus=["AU1", "AU12"], image_size=64, encoder=dict(embed_dim=32),
                               architecture=architecture, heads=dict(use_text=False)).model
    module.encoder.backbone.model.patch_embed.requires_grad_(False)  # frozen ones are left out
    groups = parameter_groups(module, 1e-3, 0.05, layer_decay, layered="encoder.backbone.model")
    seen = [id(p) for g in groups for p in g["params"]]
    trainable = [id(p) for p in module.parameters() if p.requires_grad]
    assert len(seen) == len(set(seen)) and set(seen) == set(trainable)
    exempt = {id(p) for n, p in module.named_parameters() if n in no_weight_decay(module)}
    for group in groups:
        assert all((id(p) in exempt) == (group["weight_decay"] == 0) for p in group["params"])
    torch.optim.AdamW(groups)


def test_a_layer_decay_outside_0_1_is_refused():
    with pytest.raises(ValueError, match=r"layer_decay must lie in \(0, 1\]"):
        parameter_groups(torch.nn.Linear(2, 2), 1e-3, 0.05, layer_decay=0.0)
