"""Speed switches: channels-last layout and ``torch.compile``.

``Performance`` is a callback that ``AUCLI`` always adds, both switches off (the defaults here,
which no shipped config repeats); a config turns them on under the top-level ``performance:``
key, or the command line with ``--performance.compile true``. Both act on every
``SwinBackbone`` of the model, in place, so checkpoints keep their keys and load into an
uncompiled model.
"""

from __future__ import annotations

import lightning as L
from lightning.pytorch.utilities import rank_zero_info

from aukit.models.backbone import SwinBackbone


class Performance(L.Callback):
    """``channels_last``: patch-embedding weights and input images in NHWC memory layout (the
    Swin stages are NHWC already). ``compile``: ``torch.compile`` each Swin backbone
    (``compile_mode`` e.g. "max-autotune"; ``compile_backend`` e.g. "aot_eager" to debug). The
    region, graph and cross-attention heads stay eager: they are small, and the dynamic top-k
    graph would break a compiled graph every step."""

    def __init__(self, channels_last: bool = False, compile: bool = False,
                 compile_mode: str | None = None, compile_backend: str = "inductor") -> None:
        self.channels_last, self.compile = channels_last, compile
        self.compile_mode, self.compile_backend = compile_mode, compile_backend

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        backbones = [m for m in pl_module.modules() if isinstance(m, SwinBackbone)]
        for backbone in backbones:
            if self.channels_last:
                backbone.use_channels_last()
            if self.compile and not backbone.compiled:
                backbone.compile(mode=self.compile_mode, backend=self.compile_backend)
        if backbones and (self.channels_last or self.compile):
            rank_zero_info(f"performance: channels_last={self.channels_last}, "
                           f"compile={self.compile} ({len(backbones)} Swin backbone(s))")
