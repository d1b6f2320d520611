"""The CKA-group term as a training step runs it: no host reads, the teacher's features freed
before the student's forward, no float32 copy of bf16 features kept for the backward, one graph
under torch.compile (and an eager fallback when compiling fails), values in width-group order."""
import weakref

import numpy as np
import pytest
import torch

import models
from cka import cka_matrix, grouped_normalized_grams, width_groups
from conftest import distillation, student_options
from distiller_zoo import _common
from distiller_zoo.base import Batch
from distiller_zoo.ckagroup import CKAGroupLoss, CKASettings
from helper.checkpoint import freeze
from helper.loops import StepOptions, model_outputs

HOST_READS = ('item', 'tolist', '__bool__', '__float__', '__int__', '__index__', 'numpy')


def _objective(teacher='resnet14', student='resnet8', **opts):
    torch.manual_seed(0)
    t_model, s_model = models.build_model(teacher, 10), models.build_model(student, 10)
    freeze(t_model)
    values = dict(distill='ckagroup', cka_groups='2', cka_batches=1, batch_size=16, seed=0, beta=5.0)
    values.update(opts)
    data = torch.utils.data.TensorDataset(torch.randn(32, 3, 32, 32), torch.randint(0, 10, (32,)))
    wired = distillation(s_model, t_model, student_options(**values), train_set=data)
    batch = Batch(torch.randn(16, 3, 32, 32), torch.randint(0, 10, (16,)))
    return wired.objective, wired.distiller, batch


@pytest.mark.parametrize('amp', [False, True])
def test_training_step_reads_nothing_back(monkeypatch, amp):
    """A whole ckagroup step, forward and backward, asks the device for no value: every way of
    reading a tensor back to the host raises."""
    objective, distiller, batch = _objective()
    objective.train()

    def refuse(*args, **kwargs):
        raise AssertionError('a host read inside the training step')

    for name in HOST_READS:
        monkeypatch.setattr(torch.Tensor, name, refuse)
    with StepOptions(amp=amp).autocast('cpu'):
        loss, terms, _ = objective(batch)
    loss.backward()
    monkeypatch.undo()
    assert 'loss_ckagroup' in terms and np.isfinite(loss.item())


def test_teacher_features_are_freed_before_the_student_forward():
    objective, distiller, batch = _objective()
    objective.train()
    alive = []
    names = objective.teacher.block_layer_names()
    hooks = [objective.teacher.get_submodule(name).register_forward_hook(
        lambda module, inputs, output: alive.append(weakref.ref(output))) for name in names]
    seen = []

    def count_alive(module, inputs):
        seen.append(sum(r() is not None for r in alive))

    objective.student.register_forward_pre_hook(count_alive)
    objective(batch)[0].backward()
    for hook in hooks:
        hook.remove()
    assert len(alive) == len(names) and seen == [0]


def test_no_float_copy_of_bf16_features_is_saved_for_backward():
    """The term saves its bf16 inputs (the model keeps them anyway), never a float32 copy."""
    torch.manual_seed(0)
    student = [torch.randn(16, 8, 4, 4).bfloat16().requires_grad_(True) for _ in range(2)]
    teacher = [torch.randn(16, 8, 4, 4).bfloat16(), torch.randn(16, 20).bfloat16()]
    loss_fn = CKAGroupLoss([[0], [1]], [[0], [1]], student_widths=[128, 128], teacher_widths=[128, 20])
    rows = loss_fn.teacher_grams(teacher)
    saved = []

    def pack(tensor):
        saved.append((tensor.dtype, tensor.numel()))
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        loss, _, _ = loss_fn.term(student, rows)
    loss.backward()
    layer_size = student[0].numel()
    assert any(dtype == torch.bfloat16 and numel == layer_size for dtype, numel in saved)
    assert not [s for s in saved if s[0] != torch.bfloat16 and s[1] >= layer_size], saved
    assert all(x.grad is not None and x.grad.dtype == torch.bfloat16 for x in student)


def test_term_traces_as_one_graph():
    objective, distiller, batch = _objective()
    with torch.no_grad():
        teacher_out = distiller.prepare_teacher(model_outputs(objective.teacher, batch.images, distiller))
    student_feats = distiller.layers(model_outputs(objective.student, batch.images, distiller))
    torch._dynamo.reset()
    explanation = torch._dynamo.explain(distiller.loss.term)(student_feats, teacher_out.prepared)
    assert explanation.graph_break_count == 0 and explanation.graph_count == 1


def test_compiled_term_matches_eager(monkeypatch):
    """Compiled whole (dynamo with fullgraph, AOT autograd; the eager-kernel backend keeps the test
    fast on two cores), the term gives the eager values and gradients."""
    real_compile = torch.compile
    monkeypatch.setattr(torch, 'compile', lambda fn, **kw: real_compile(fn, **{**kw, 'backend': 'aot_eager'}))
    torch._dynamo.reset()
    torch.manual_seed(0)
    student = [torch.randn(16, 4, 8, 8), torch.randn(16, 8, 4, 4), torch.randn(16, 32) + 100.0]
    teacher = [torch.randn(16, 256), torch.randn(16, 6, 4, 4), torch.randn(16, 3, 4, 4)]
    loss_fn = CKAGroupLoss([[0, 1], [2]], [[0], [1, 2]], student_widths=[256, 128, 32],
                           teacher_widths=[256, 96, 48])
    rows = loss_fn.teacher_grams(teacher)
    results = []
    for enabled in (False, True):
        inputs = [x.clone().requires_grad_(True) for x in student]
        term = _common.compiled_or_eager(loss_fn.term, enabled, 'the term')
        loss, values, matrix = term(inputs, rows)
        loss.backward()
        results.append((loss.detach(), values, matrix, [x.grad for x in inputs]))
    (l0, v0, m0, g0), (l1, v1, m1, g1) = results
    torch.testing.assert_close(l1, l0, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(m1, m0, rtol=1e-5, atol=1e-6)
    for a, b in zip(g1, g0):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-7)


def test_compile_failure_falls_back_to_eager_with_one_line(monkeypatch, capsys):
    calls = []

    def broken(*args):
        calls.append('compiled')
        raise RuntimeError('backend exploded\nwith a long trace')

    monkeypatch.setattr(torch, 'compile', lambda fn, **kw: broken)
    term = _common.compiled_or_eager(lambda x: x + 1, True, 'the CKA-group term')
    assert term(torch.tensor(1.0)) == 2 and term(torch.tensor(2.0)) == 3
    assert calls == ['compiled']  # not tried again: eager for the rest of the run
    lines = [line for line in capsys.readouterr().out.splitlines() if line]
    assert lines == ['note: the CKA-group term could not be compiled (RuntimeError: backend exploded); '
                     'it runs eagerly for the rest of the run']


@pytest.mark.parametrize('device_type, compile_mode, choice, expected', [
    ('cpu', None, 'auto', False), ('cuda', None, 'auto', True), ('cpu', 'default', 'auto', True),
    ('cuda', None, 'off', False), ('cpu', None, 'on', True)])
def test_when_the_term_is_compiled(device_type, compile_mode, choice, expected):
    settings = CKASettings.from_options(student_options(distill='ckagroup', cka_compile=choice))
    assert settings.compiles_term(torch.device(device_type), compile_mode) is expected


def test_width_groups_and_group_order_values():
    """Layers grouped by width (smallest total size first), Grams in that order, values equal to
    the layer-order float64 matrix permuted the same way."""
    assert width_groups([32, 64, 32, 16, 64, 32]) == [[3], [0, 2, 5], [1, 4]]
    torch.manual_seed(0)
    xs = [torch.randn(12, 2, 4, 4), torch.randn(12, 64), torch.randn(12, 8, 2, 2) + 5.0, torch.randn(12, 7)]
    ys = [torch.randn(12, 5), torch.randn(12, 32)]
    rows_x, order_x = grouped_normalized_grams(xs, 'linear', True)
    rows_y, order_y = grouped_normalized_grams(ys, 'linear', True)
    assert order_x == [3, 0, 2, 1] and order_y == [0, 1]
    ref = cka_matrix([x.double() for x in xs], [y.double() for y in ys], 'linear', True)
    np.testing.assert_allclose((rows_x @ rows_y.T).double().numpy(), ref[order_x][:, order_y].numpy(),
                               rtol=1e-5, atol=1e-6)


def test_teacher_list_released_group_by_group():
    torch.manual_seed(0)
    layers = [torch.randn(8, 16), torch.randn(8, 4, 2, 2), torch.randn(8, 3)]
    refs = [weakref.ref(x) for x in layers]
    feats = list(layers)
    del layers
    expected = grouped_normalized_grams([r() for r in refs], 'linear', True)[0]
    rows, _ = grouped_normalized_grams(feats, 'linear', True, release=True)
    assert feats == [] and all(r() is None for r in refs)
    torch.testing.assert_close(rows, expected)


@pytest.mark.parametrize('name, kind', [('resnet32x4', 'blocks'), ('MobileNetV2', 'blocks'), ('vgg8', 'stages')])
def test_layer_widths_are_the_tapped_outputs_sizes(name, kind):
    """The widths the loss groups by, from one probe forward, equal those of a training forward's
    layer outputs, and the probe leaves the model's mode and BN statistics alone."""
    torch.manual_seed(0)
    model = models.build_model(name, 10).train()
    stats = {k: v.clone() for k, v in model.state_dict().items()}
    widths = models.layer_widths(model, kind, (3, 32, 32))
    assert model.training and all(torch.equal(v, stats[k]) for k, v in model.state_dict().items())
    outputs = models.layer_outputs(model, torch.randn(4, 3, 32, 32), kind)
    assert widths == [o[0].numel() for o in outputs] and len(widths) == len(outputs)
