"""The base both training stages share: self-describing checkpoints and exact resume."""

from __future__ import annotations

import math
from typing import Any

import lightning as L
import torch

from aukit.checkpoint import META_KEY, STAGE_HINT
from aukit.data.transforms import normalize_images
from aukit.optim import Optimisation, parameter_groups, warmup_cosine
from aukit.utils.rng import restore_rng_state, rng_state


class StageModule(L.LightningModule):
    """A LightningModule that writes ``checkpoint["aukit"]`` (stage + ``checkpoint_meta()``),
    refuses to resume from the other stage's checkpoint, and resumes exactly: RNG states and the
    training loader's position (``aukit.data.sampling.ResumableDataLoader``) come back."""

    stage: str = ""

    def checkpoint_meta(self) -> dict[str, Any]:
        """What a checkpoint of this stage says about itself (backbone, image size, AUs ...)."""
        raise NotImplementedError

    def adamw_warmup_cosine(self, model: torch.nn.Module, optim: Optimisation,
                            layered: str | None = None) -> dict:
        """AdamW over ``model``'s parameter groups (``aukit.optim.parameter_groups``; ``layered``
        names the submodule that gets ``optim.layer_decay``), linear warm-up for
        ``optim.warmup_epochs`` epochs, then cosine to the end of training, stepped every
        optimiser step."""
        groups = parameter_groups(model, optim.lr, optim.weight_decay, optim.layer_decay,
                                  layered=layered)
        optimizer = torch.optim.AdamW(groups, lr=optim.lr)
        total = int(self.trainer.estimated_stepping_batches)
        per_epoch = self.trainer.num_training_batches / self.trainer.accumulate_grad_batches
        per_epoch = per_epoch if math.isfinite(per_epoch) else total  # iterable of unknown size
        schedule = warmup_cosine(optimizer, int(optim.warmup_epochs * per_epoch), total)
        return {"optimizer": optimizer,
                "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    def on_before_backward(self, loss: torch.Tensor) -> None:
        """Stop at the first non-finite loss, before it reaches the weights or a checkpoint."""
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"the {self.stage} loss became {loss.item()} at step {self.global_step}; the "
                "weights are still the last finite ones and earlier checkpoints are kept. Fix: "
                "lower --model.optim.lr, clip gradients (--trainer.gradient_clip_val 1.0), or run "
                "--trainer.precision 32-true to see whether bf16 is the cause; resume with "
                "--ckpt_path <last checkpoint>")

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """Stop at the first non-finite gradient (clipping would turn it into NaN weights) and
        name the parameters that hold it. Under fp16 mixed precision the grad scaler owns
        overflow (it skips such steps and lowers its scale), so nothing is checked there."""
        if getattr(getattr(self._trainer, "precision_plugin", None), "scaler", None) is not None:
            return
        named = [(n, p.grad) for n, p in self.named_parameters() if p.grad is not None]
        if not named:
            return
        norms = torch._foreach_norm([g for _, g in named])
        if torch.isfinite(torch.stack(norms).sum()):
            return
        bad = [n for (n, _), v in zip(named, norms, strict=True) if not torch.isfinite(v)]
        raise FloatingPointError(
            f"non-finite gradients at step {self.global_step} in {len(bad)} parameters: "
            f"{', '.join(bad[:6])}{' ...' if len(bad) > 6 else ''}; the weights are still the "
            "last finite ones. Fix: lower --model.optim.lr or run --trainer.precision 32-true to "
            "see whether bf16 is the cause; resume with --ckpt_path <last checkpoint>")

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Normalise uint8 ``batch["image"]`` on the device, one batched pass (the loaders'
        workers only decode and augment); in each part of a combined batch (a dict of such
        batches, e.g. ``{"labelled": ..., "unlabeled": ...}``)."""
        if isinstance(batch, dict) and "image" in batch:
            batch["image"] = normalize_images(batch["image"])
        elif isinstance(batch, dict):
            for part in batch.values():
                self.on_after_batch_transfer(part, dataloader_idx)
        return batch

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint[META_KEY] = {"stage": self.stage, **self.checkpoint_meta(),
                                "config": dict(self.hparams)}
        checkpoint["rng_state"] = rng_state()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        found = checkpoint.get(META_KEY, {}).get("stage")
        if found != self.stage:
            raise ValueError(f"cannot load a {found!r} checkpoint into the {self.stage} stage; "
                             f"pass {STAGE_HINT[self.stage]}"
                             + (" (a stage-1 checkpoint initialises finetuning through "
                                "--model.pretrained, not --ckpt_path)"
                                if found == "pretrain" else ""))
        if "rng_state" in checkpoint:
            restore_rng_state(checkpoint["rng_state"])
        loops = checkpoint.get("loops", {}).get("fit_loop", {}).get("state_dict", {})
        self._loader_states = loops.get("combined_loader", [])

    def on_train_start(self) -> None:
        # Lightning reads the training loader before it restores loop state (to count steps for
        # the LR schedule) and then never hands the loader its saved position; do it here.
        states = getattr(self, "_loader_states", [])
        loaders = self.trainer.train_dataloader
        loaders = (list(loaders.values()) if isinstance(loaders, dict) else loaders
                   if isinstance(loaders, (list, tuple)) else [loaders])
        stateful = [dl for dl in loaders if hasattr(dl, "load_state_dict")]
        for loader, state in zip(stateful, states, strict=False):
            loader.load_state_dict(state)
        self._loader_states = []
