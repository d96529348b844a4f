"""freeze_parts: ``--model.freeze`` names parts of a model that do not train."""

import pytest
from torch import nn

from aukit.models.freeze import freeze_parts


def model() -> nn.Module:
    encoder = nn.Module()
    encoder.backbone = nn.Linear(2, 2)
    encoder.region = nn.Module()
    encoder.region.geometry = None  # switched off
    encoder.region.queries = nn.Parameter(nn.init.zeros_(nn.Linear(2, 2).weight))
    net = nn.Module()
    net.encoder, net.head = encoder, nn.Linear(2, 1)
    return net


def test_named_parts_stop_training_and_the_rest_trains():
    net = model()
    freeze_parts(net, ["encoder.backbone", "encoder.region.queries", "encoder.region.geometry"])
    trainable = {name for name, p in net.named_parameters() if p.requires_grad}
    assert trainable == {"head.weight", "head.bias"}


def test_a_part_the_model_lacks_is_refused_with_examples():
    with pytest.raises(ValueError, match=r"'encoder.neck', which this model \(hiva\) does not"):
        freeze_parts(model(), ["encoder.neck"], "hiva")
