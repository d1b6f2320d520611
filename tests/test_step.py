"""How one training step combines its terms: cls * CE + div * KD(T) + beta * (each method term),
against a float64 numpy computation of the same formula."""
import argparse
import types

import numpy as np
import pytest
import torch
from torch import nn

from distiller_zoo.base import Batch, Distiller
from helper.loops import DistillObjective


class TwoTerms(Distiller):
    """A method with two terms of its own, both functions of the logits."""

    def forward(self, student_out, teacher_out, batch):
        return {'square': student_out.logits.pow(2).mean(),
                'gap': (student_out.logits - teacher_out.logits).abs().mean()}


def _log_softmax(z):
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def reference_loss(s, t, targets, cls, div, beta, T):
    """Float64: cross-entropy, KL(p_t || p_s) at T times T^2 per sample (batch mean), the two terms."""
    ce = -_log_softmax(s)[np.arange(len(s)), targets].mean()
    log_ps, log_pt = _log_softmax(s / T), _log_softmax(t / T)
    kd = (np.exp(log_pt) * (log_pt - log_ps)).sum(axis=1).mean() * T * T
    square, gap = (s ** 2).mean(), np.abs(s - t).mean()
    return cls * ce + div * kd + beta * (square + gap), ce, kd, square, gap


@pytest.mark.parametrize('cls, div, beta, T', [(1.0, 1.0, 0.0, 4.0), (0.7, 0.3, 2.5, 2.0), (0.0, 0.0, 1.0, 4.0),
                                               (1.0, 0.0, 3.0, 4.0)])
def test_step_loss_is_the_weighted_sum(cls, div, beta, T):
    torch.manual_seed(0)
    student = nn.Sequential(nn.Flatten(), nn.Linear(12, 5))
    teacher = nn.Sequential(nn.Flatten(), nn.Linear(12, 5))
    opt = argparse.Namespace(cls=cls, div=div, beta=beta, kd_T=T)
    distiller = TwoTerms(types.SimpleNamespace(teacher=teacher))
    objective = DistillObjective(student, teacher, distiller, opt)
    images, targets = torch.randn(6, 3, 2, 2), torch.tensor([0, 1, 2, 3, 4, 0])
    loss, terms, logits = objective(Batch(images, targets))
    with torch.no_grad():
        s = student(images).double().numpy()
        t = teacher(images).double().numpy()
    expected, ce, kd, square, gap = reference_loss(s, t, targets.numpy(), cls, div, beta, T)
    assert loss.item() == pytest.approx(expected, rel=1e-5, abs=1e-6)
    assert terms['loss_cls'].item() == pytest.approx(ce, rel=1e-5)
    assert terms['loss_square'].item() == pytest.approx(square, rel=1e-5)
    assert terms['loss_gap'].item() == pytest.approx(gap, rel=1e-5)
    if div:
        assert terms['loss_div'].item() == pytest.approx(kd, rel=1e-5)
    else:  # no KD term computed or logged at weight 0
        assert 'loss_div' not in terms
    np.testing.assert_allclose(logits.detach().double().numpy(), s, rtol=1e-6)
    loss.backward()
    assert all(p.grad is None for p in teacher.parameters())  # the teacher is never trained
