"""Optimisation shared by both stages: one weight-decay policy, its parameter groups, and the
learning-rate schedule.

The policy: a parameter gets no weight decay when it is a bias, a norm or BatchNorm scale, a
scalar (every parameter with ``ndim <= 1``), or when a module declares it in its
``no_weight_decay()`` (timm's convention: a set of parameter names relative to that module), as
timm's Swin does for its relative-position tables and ``AURegionEncoder`` / ``HiVA`` do for
their learned AU queries and embeddings. Everything else (weight matrices, convolutions,
projection and classifier weights) is decayed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from timm.optim import param_groups_layer_decay
from torch import nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR


@dataclass(frozen=True)
class Optimisation:
    """AdamW under the weight-decay policy above, a linear warm-up, then a cosine decay to the
    end of training (each stage's ``--model.optim.*``).

    Args:
        lr: the peak learning rate.
        weight_decay: AdamW weight decay (never on biases, norms, scalars or AU queries).
        layer_decay: the Swin backbone's layer-wise learning-rate decay: its last block trains
            at ``lr * layer_decay`` and each earlier one another factor lower (1: one rate).
        warmup_epochs: epochs of linear warm-up.
    """

    lr: float = 1e-3
    weight_decay: float = 0.05
    layer_decay: float = 1.0
    warmup_epochs: float = 1.0

def no_weight_decay(module: nn.Module) -> set[str]:
    """Names (as in ``module.named_parameters()``) of the trainable parameters exempt from
    weight decay under the policy above."""
    declared = set()
    for prefix, sub in module.named_modules():
        names = getattr(sub, "no_weight_decay", None)
        if callable(names):
            declared |= {f"{prefix}.{name}" if prefix else name for name in names()}
    return {name for name, p in module.named_parameters()
            if p.requires_grad and (p.ndim <= 1 or name in declared)}


def parameter_groups(module: nn.Module, lr: float, weight_decay: float,
                     layer_decay: float = 1.0, layered: str | None = None) -> list[dict]:
    """AdamW parameter groups (each with "params", "lr", "weight_decay") over every trainable
    parameter of ``module``, exactly once; frozen parameters are left out.

    ``layered`` names a timm submodule (e.g. ``"encoder.backbone.model"``, the Swin) that gets
    layer-wise LR decay when ``layer_decay < 1``: timm's ``param_groups_layer_decay`` over its
    blocks, patch embedding first, the deepest block at ``lr * layer_decay`` and each earlier
    one another factor of ``layer_decay``; the modules after it act as its head and train at
    the full ``lr``.
    """
    if not 0.0 < layer_decay <= 1.0:
        raise ValueError(f"layer_decay must lie in (0, 1], got {layer_decay}")
    exempt = no_weight_decay(module)
    groups: list[dict] = []
    prefix = ""
    if layered is not None and layer_decay < 1.0:
        inner = module.get_submodule(layered)
        prefix = layered + "."
        groups = param_groups_layer_decay(
            inner, weight_decay=weight_decay, layer_decay=layer_decay,
            no_weight_decay_list=[n[len(prefix):] for n in exempt if n.startswith(prefix)])
        for group in groups:
            # the modules on top of the layered one act as its head: one more decay step
            group["lr"] = lr * group.pop("lr_scale") * layer_decay
    rest = [(n, p) for n, p in module.named_parameters()
            if p.requires_grad and not (prefix and n.startswith(prefix))]
    groups.append({"params": [p for n, p in rest if n not in exempt], "lr": lr,
                   "weight_decay": weight_decay})
    groups.append({"params": [p for n, p in rest if n in exempt], "lr": lr, "weight_decay": 0.0})
    return [g for g in groups if g["params"]]


def warmup_cosine(optimizer: Optimizer, warmup_steps: int, total_steps: int,
                  min_ratio: float = 0.01) -> LambdaLR:
    """Linear warm-up to each group's LR over ``warmup_steps``, then cosine to ``min_ratio``."""
    total_steps = max(total_steps, 1)
    warmup_steps = min(max(warmup_steps, 0), total_steps - 1)

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / (warmup_steps + 1)
        progress = min((step - warmup_steps) / max(total_steps - warmup_steps, 1), 1.0)
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return LambdaLR(optimizer, factor)
