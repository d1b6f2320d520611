"""CKA figures: content checked through matplotlib's objects (Agg backend), not pixels."""
import matplotlib
import numpy as np
import pytest
from matplotlib.colors import to_hex
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from cka.heatmap import (group_colour, matrices_figure, runs_figure, save_png, student_teacher_figure,
                         teacher_caption, teacher_figure)

TEACHER_NAMES = ['stem', 'layer1.0', 'layer1.1', 'layer2.0', 'layer2.1', 'layer3.0']
TEACHER_GROUPS = [[0, 1], [2, 3], [4, 5]]
STUDENT_NAMES = ['stem', 'layer1.0', 'layer2.0']
STUDENT_GROUPS = [[0], [1], [2]]
# tab10, the colours matplotlib documents for its default cycle, in order
TAB10 = ['#1f77b4', '#ff7f0e', '#2ca02c', '#d62728', '#9467bd', '#8c564b', '#e377c2', '#7f7f7f',
         '#bcbd22', '#17becf']


def _teacher_matrix():
    distance = np.abs(np.subtract.outer(np.arange(6), np.arange(6)))
    matrix = 1.0 - distance / 4.0   # 1 on the diagonal, down to -0.25 for the farthest pair
    return matrix


def _group_boxes(ax):
    return sorted((p for p in ax.patches if isinstance(p, Rectangle) and (p.get_gid() or '').startswith('group')),
                  key=lambda p: p.get_gid())


def _tick_texts(ax, axis):
    labels = ax.get_xticklabels() if axis == 'x' else ax.get_yticklabels()
    return [t.get_text() for t in labels]


def test_group_colours_are_tab10_in_order_and_cycle():
    assert [group_colour(i) for i in range(10)] == TAB10
    assert group_colour(10) == TAB10[0]


def test_teacher_figure_names_colour_bar_groups_and_caption(tmp_path):
    matrix = _teacher_matrix()
    caption = teacher_caption({'estimator': 'debiased', 'kernel': 'linear', 'layers': 'blocks', 'batches': 10,
                               'batch_size': 64, 'seed': 0})
    fig = teacher_figure(matrix, TEACHER_NAMES, TEACHER_GROUPS, caption=caption)
    assert isinstance(fig, Figure)
    ax, bar = fig.axes  # the matrix and its colour bar
    assert _tick_texts(ax, 'x') == TEACHER_NAMES and _tick_texts(ax, 'y') == TEACHER_NAMES
    assert ax.get_xlabel() == 'teacher layer' and ax.get_ylabel() == 'teacher layer'
    np.testing.assert_array_equal(ax.images[0].get_array(), matrix)
    # the smallest value is -0.25: the scale goes down to -0.3 and up to 1
    assert ax.images[0].get_clim() == pytest.approx((-0.3, 1.0))
    assert bar.get_ylim() == pytest.approx((-0.3, 1.0))
    assert bar.get_ylabel() == 'CKA (colour scale -0.3 to 1)'
    boxes = _group_boxes(ax)
    assert len(boxes) == 3
    for index, (box, group) in enumerate(zip(boxes, TEACHER_GROUPS)):
        assert box.get_xy() == pytest.approx((group[0] - 0.5, group[0] - 0.5))
        assert (box.get_width(), box.get_height()) == (len(group), len(group))
        assert to_hex(box.get_edgecolor()) == TAB10[index]
    legend_texts = [t.get_text() for t in fig.legends[0].get_texts()]
    assert legend_texts == ['G0: 0-1 (stem-layer1.0)', 'G1: 2-3 (layer1.1-layer2.0)', 'G2: 4-5 (layer2.1-layer3.0)']
    (caption_text,) = [t for t in fig.texts if t.get_gid() == 'caption']
    assert caption_text.get_text() == ('debiased linear CKA, block-level layers, 10 batches of 64 training '
                                       'images (seed 0)')
    path = save_png(fig, str(tmp_path / 'sub' / 'teacher.png'))
    with open(path, 'rb') as f:
        assert f.read(8) == b'\x89PNG\r\n\x1a\n'


def test_colour_scale_is_zero_to_one_without_negative_values():
    fig = teacher_figure(np.clip(_teacher_matrix(), 0.05, 1.0), TEACHER_NAMES, TEACHER_GROUPS)
    assert fig.axes[0].images[0].get_clim() == pytest.approx((0.0, 1.0))


def test_student_teacher_figure_blocks_and_values():
    matrix = np.linspace(0.1, 0.9, 18).reshape(3, 6)
    values = [0.812, 0.5, 0.25]
    fig = student_teacher_figure(matrix, STUDENT_NAMES, TEACHER_NAMES, STUDENT_GROUPS, TEACHER_GROUPS, values,
                                 title='monitor: student x teacher CKA, epoch 3')
    ax = fig.axes[0]
    assert _tick_texts(ax, 'x') == TEACHER_NAMES and _tick_texts(ax, 'y') == STUDENT_NAMES
    assert ax.get_xlabel() == 'teacher layer' and ax.get_ylabel() == 'student layer'
    assert ax.get_title() == 'monitor: student x teacher CKA, epoch 3'
    boxes = _group_boxes(ax)
    assert [(b.get_xy(), b.get_width(), b.get_height()) for b in boxes] == [
        ((-0.5, -0.5), 2, 1), ((1.5, 0.5), 2, 1), ((3.5, 1.5), 2, 1)]
    texts = {t.get_gid(): t for t in ax.texts}
    assert [texts[f'value {i}'].get_text() for i in range(3)] == ['0.81', '0.50', '0.25']
    assert [texts[f'value {i}'].get_position() for i in range(3)] == [(0.5, 0.0), (2.5, 1.0), (4.5, 2.0)]


def test_reversed_pairing_outlines_the_anti_diagonal_blocks():
    matrix = np.full((3, 6), 0.5)
    fig = student_teacher_figure(matrix, STUDENT_NAMES, TEACHER_NAMES, STUDENT_GROUPS, TEACHER_GROUPS[::-1],
                                 [0.1, 0.2, 0.3])
    boxes = _group_boxes(fig.axes[0])
    assert [b.get_xy() for b in boxes] == [(3.5, -0.5), (1.5, 0.5), (-0.5, 1.5)]


@pytest.mark.parametrize('bad, message', [
    (dict(student_groups=[[0, 2], [1]], teacher_groups=[[0, 1, 2], [3, 4, 5]]), 'contiguous'),
    (dict(student_groups=[[0], [1, 2]], teacher_groups=TEACHER_GROUPS), 'pair up'),
    (dict(student_names=['a', 'b']), 'names'),
    (dict(group_values=[0.5]), 'group values'),
])
def test_inconsistent_input_is_refused(bad, message):
    kwargs = dict(matrix=np.zeros((3, 6)), student_names=STUDENT_NAMES, teacher_names=TEACHER_NAMES,
                  student_groups=STUDENT_GROUPS, teacher_groups=TEACHER_GROUPS, group_values=[0.1, 0.2, 0.3])
    kwargs.update(bad)
    with pytest.raises(ValueError, match=message):
        student_teacher_figure(**kwargs)


@pytest.mark.parametrize('count', [4, 60])
def test_tick_labels_thin_for_long_name_lists_and_fonts_shrink(count):
    names = [f'layer{i}' for i in range(count)]
    matrix = np.eye(count)
    fig = teacher_figure(matrix, names, [list(range(count // 2)), list(range(count // 2, count))])
    ax = fig.axes[0]
    shown = _tick_texts(ax, 'x')
    if count == 4:
        assert shown == names
    else:  # every other name: 30 labels, the first one first
        assert shown == names[::2] and len(shown) == 30
    assert _tick_texts(ax, 'y') == shown
    size = ax.get_xticklabels()[0].get_fontsize()
    assert (size == 10) if count == 4 else (6 <= size < 10)
    # the matrix grows with the layer count but stays on a page: at most 8 inches for 60 layers
    width = fig.get_figwidth()
    assert (width < 8) if count == 4 else (7 < width < 13)


def _record(epoch, group_cka, matrix):
    return {'epoch': epoch, 'student_layers': STUDENT_NAMES, 'teacher_layers': TEACHER_NAMES,
            'student_groups': STUDENT_GROUPS, 'teacher_groups': TEACHER_GROUPS, 'matrix': matrix,
            'group_cka': group_cka}


def test_runs_figure_curves_legend_and_accuracy():
    matrix = np.full((3, 6), 0.6).tolist()
    histories = {
        'kd': [_record(1, [0.5, 0.4, 0.3], matrix), _record(2, [0.6, 0.5, 0.4], matrix)],
        'ckagroup': [_record(1, [0.7, 0.6, -0.1], matrix), _record(2, [0.8, 0.7, 0.6], matrix)],
    }
    metrics = {'kd': [{'epoch': 1, 'test/top1': 30.0}, {'epoch': 2, 'test/top1': 40.0}],
               'ckagroup': [{'epoch': 1, 'test/top1': 35.0}, {'epoch': 2, 'test/top1': 45.0}]}
    runs = [{'label': name, 'history': histories[name], 'metrics': metrics[name]} for name in histories]
    fig = runs_figure(runs, caption='held-out monitor batches')
    curve_axes = [ax for ax in fig.axes if ax.get_title().endswith('group CKA')]
    assert [ax.get_title() for ax in curve_axes] == ['kd: group CKA', 'ckagroup: group CKA']
    group_legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert group_legend == ['G0: 0-1 (stem-layer1.0)', 'G1: 2-3 (layer1.1-layer2.0)', 'G2: 4-5 (layer2.1-layer3.0)']
    for ax, name in zip(curve_axes, histories):
        assert ax.get_xlabel() == 'epoch'
        lines = ax.get_lines()
        assert [line.get_label() for line in lines] == group_legend  # a legend entry per curve
        assert [to_hex(line.get_color()) for line in lines] == TAB10[:3]
        for group, line in enumerate(lines):
            assert list(line.get_xdata()) == [1, 2]
            assert list(line.get_ydata()) == [h['group_cka'][group] for h in histories[name]]
    assert curve_axes[0].get_ylabel() == 'group CKA'
    assert curve_axes[0].get_ylim()[0] < -0.1  # the negative value stays in view
    (accuracy,) = [ax for ax in fig.axes if ax.get_title() == 'accuracy']
    assert accuracy.get_xlabel() == 'epoch' and accuracy.get_ylabel() == 'test top-1 (%)'
    assert [t.get_text() for t in accuracy.get_legend().get_texts()] == ['kd', 'ckagroup']
    assert [list(line.get_ydata()) for line in accuracy.get_lines()] == [[30.0, 40.0], [35.0, 45.0]]
    matrix_axes = [ax for ax in fig.axes if ax.images]
    assert [ax.get_title() for ax in matrix_axes] == ['kd, epoch 2', 'ckagroup, epoch 2']
    assert all(len(_group_boxes(ax)) == 3 for ax in matrix_axes)


def test_runs_figure_without_metrics_has_no_accuracy_panel():
    runs = [{'label': 'kd', 'history': [_record(1, [0.5, 0.4, 0.3], np.full((3, 6), 0.5))]}]
    fig = runs_figure(runs)
    assert not [ax for ax in fig.axes if ax.get_title() == 'accuracy']


def test_matrices_figure_one_scale_for_all_panels():
    teacher = {'matrix': _teacher_matrix(), 'layer_names': TEACHER_NAMES, 'groups': TEACHER_GROUPS}
    panels = [dict(_record(6, [0.9, 0.8, 0.7], np.full((3, 6), 0.4 + 0.1 * i)), title=f'row {i}') for i in range(3)]
    fig = matrices_figure(teacher, panels, caption='x')
    matrix_axes = [ax for ax in fig.axes if ax.images]
    assert [ax.get_title() for ax in matrix_axes] == ['teacher', 'row 0', 'row 1', 'row 2']
    assert {ax.images[0].get_clim() for ax in matrix_axes} == {(-0.3, 1.0)}
    assert [len(_group_boxes(ax)) for ax in matrix_axes] == [3, 3, 3, 3]
    assert _tick_texts(matrix_axes[1], 'y') == STUDENT_NAMES


def test_figures_never_open_a_window():
    assert matplotlib.get_backend().lower() == 'agg'


def _outside(fig):
    """Texts of the figure that reach beyond its edges."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    frame = fig.bbox
    texts = [t for ax in fig.axes for t in ax.get_xticklabels() + ax.get_yticklabels()
             + [ax.xaxis.label, ax.yaxis.label, ax.title]] + list(fig.texts) + list(fig.legends)
    cut = []
    for t in texts:
        if hasattr(t, 'get_text') and not t.get_text():
            continue
        box = t.get_window_extent(renderer)
        if box.x0 < -0.5 or box.y0 < -0.5 or box.x1 > frame.x1 + 0.5 or box.y1 > frame.y1 + 0.5:
            cut.append(t.get_text() if hasattr(t, 'get_text') else 'legend')
    return cut


@pytest.mark.parametrize('count', [4, 16, 30, 60])
def test_nothing_is_cut_off_from_4_to_60_layers(count):
    names = [f'blocks.{i // 10}.{i % 10}' for i in range(count)]
    halves = [list(range(count // 2)), list(range(count // 2, count))]
    teacher = teacher_figure(np.eye(count), names, halves, title='resnet32 (CIFAR-10): teacher CKA',
                             caption='debiased linear CKA, block-level layers, 10 batches of 64 training images')
    assert _outside(teacher) == []
    student = student_teacher_figure(np.full((4, count), 0.5), names[:4], names, [[0, 1], [2, 3]], halves,
                                     [0.5, 0.25], title='monitor: student x teacher CKA, epoch 12')
    assert _outside(student) == []
