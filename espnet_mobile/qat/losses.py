"""Training losses: cross-entropy on labels, and distillation from the fp32 teacher (its argmax plus KL
divergence at a temperature)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from espnet_mobile.qat import data as qat_data
from espnet_mobile.qat.config import RunConfig
from espnet_mobile.qat.distributed import Dist

# --------------------------------------------------------------------------- losses


def _to_device(x: np.ndarray, dist: Dist) -> torch.Tensor:
    return torch.from_numpy(x).to(dist.device)


def label_loss(logits: torch.Tensor, labels: torch.Tensor, dist: Dist,
               weight: torch.Tensor | None = None) -> tuple[torch.Tensor, float]:
    """Cross-entropy (per-class ``weight``, if given) summed over labelled pixels / labelled pixels of the
    global batch (x world for DDP)."""
    valid = float((labels != qat_data.IGNORE).sum().item())
    total = dist.sum(valid)
    loss = F.cross_entropy(logits, labels.long(), weight=weight, ignore_index=qat_data.IGNORE, reduction="sum")
    return loss * (dist.world / max(total, 1.0)), total


def kl_to_teacher(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """T^2 * KL(teacher_T || student_T), summed over pixels."""
    t = temperature
    return F.kl_div(F.log_softmax(student / t, dim=1), F.log_softmax(teacher / t, dim=1), log_target=True,
                    reduction="sum") * (t * t)


def label_and_teacher_loss(student: torch.Tensor, labels: torch.Tensor, teacher: torch.Tensor, cfg: RunConfig,
                           dist: Dist, global_pixels: float, weight: torch.Tensor | None = None) -> torch.Tensor:
    """Cross-entropy on labels plus label_kd_weight x the KL term of :func:`distill_loss`, per pixel.

    The KL term covers every pixel, unlabelled ones included, and holds the student near the fp32 model
    where the labels alone would pull it towards the training split.
    """
    ce, _ = label_loss(student, labels, dist, weight)
    return ce + cfg.label_kd_weight * kl_to_teacher(student, teacher, cfg.temperature) * (dist.world / global_pixels)


def distill_loss(student: torch.Tensor, teacher: torch.Tensor, cfg: RunConfig, dist: Dist,
                 global_pixels: float, weight: torch.Tensor | None = None) -> torch.Tensor:
    """CE on the teacher's argmax (per-class ``weight``, if given) + kd_weight * T^2 * KL(teacher_T || student_T),
    per pixel of the global batch."""
    hard = teacher.argmax(dim=1)
    ce = F.cross_entropy(student, hard, weight=weight, reduction="sum")
    return (ce + cfg.kd_weight * kl_to_teacher(student, teacher, cfg.temperature)) * (dist.world / global_pixels)


