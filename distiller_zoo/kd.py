"""Vanilla KD (Hinton et al., 2015): KL between temperature-softened teacher and student."""
import torch
import torch.nn.functional as F

from distiller_zoo.base import Distiller


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, T: float) -> torch.Tensor:
    """KL(p_t || p_s) at temperature T, times T^2, averaged over the batch (older repos' DistillKL)."""
    log_p_s = F.log_softmax(student_logits / T, dim=1)
    p_t = F.softmax(teacher_logits / T, dim=1)
    return F.kl_div(log_p_s, p_t, reduction='batchmean') * (T * T)


class KD(Distiller):
    """KD alone: the loop always adds `div * KD`, so this method has no terms of its own."""
