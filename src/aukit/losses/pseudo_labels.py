"""Semi-supervised AU loss: a teacher's confident predictions as labels for unlabeled faces."""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn

from aukit.losses.au_bce import au_bce_loss


class EMATeacher(nn.Module):
    """A frozen copy of a model whose weights follow the student's as an exponential moving
    average (mean teacher, Tarvainen & Valpola 2017); it predicts in eval mode (dropout off,
    normalisation statistics fixed) whatever mode the trainer set, and is never trained."""

    def __init__(self, student: nn.Module):
        super().__init__()
        self.model = copy.deepcopy(student).requires_grad_(False)

    @torch.no_grad()
    def copy_from(self, student: nn.Module) -> None:
        """Start (again) from the student's weights, e.g. once a stage-1 initialisation is in."""
        self.model.load_state_dict(student.state_dict())

    @torch.no_grad()
    def update(self, student: nn.Module, decay: float) -> None:
        """teacher = decay * teacher + (1 - decay) * student; buffers are copied."""
        params = dict(student.named_parameters())
        for name, param in self.model.named_parameters():
            param.lerp_(params[name].detach(), 1 - decay)
        buffers = dict(student.named_buffers())
        for name, buffer in self.model.named_buffers():
            buffer.copy_(buffers[name])

    @torch.no_grad()
    def forward(self, *args, **kwargs):
        self.eval()  # trainers restore modules' train flags one by one, this one's included
        return self.model(*args, **kwargs)


def pseudo_label_loss(student_logits: Tensor, teacher_logits: Tensor, threshold: float = 0.9,
                      negatives: bool = True) -> tuple[Tensor, Tensor]:
    """BCE of the student against the teacher's confident decisions (FixMatch-style).

    student_logits, teacher_logits [B, A] (the teacher's on another view of the same faces);
    an AU of a face is a label where the teacher's probability is >= ``threshold`` (present)
    or <= 1 - ``threshold`` (absent; with ``negatives`` False only present ones are labels: a
    teacher sure of "absent" misses rare AUs), and ignored in between. -> (loss, share of the
    ``B * A`` decisions used as labels)."""
    if not 0.5 <= threshold < 1:
        raise ValueError(f"the pseudo-label threshold must be in [0.5, 1), got {threshold}")
    probs = teacher_logits.detach().float().sigmoid()
    confident = (probs >= threshold) | ((probs <= 1 - threshold) & negatives)
    return au_bce_loss(student_logits, (probs >= 0.5).float(), confident), confident.float().mean()
