"""CKA figures drawn with matplotlib: the teacher's matrix, student x teacher matrices, group curves.

Every builder returns a ``matplotlib.figure.Figure`` made without pyplot (no global figure
registry, so nothing leaks when a training loop draws one per epoch), rendered with the Agg
backend (no display needed). ``save_png`` writes one to a file; TensorBoard takes one with
``SummaryWriter.add_figure``.

Conventions shared by every figure:

* group i has one colour everywhere (``group_colour(i)``): its box in a matrix and its curve;
* matrices: rows on the y axis, columns on the x axis (student layers x teacher layers); values
  mapped to viridis over ``colour_range(values)`` — [0, 1], extended below 0 when the debiased
  estimator gives negative values; the colour bar states the range;
* sizes follow the layer count: cells of ``cell_inches(n)`` and fonts of ``font_points(n)``, and
  long name lists show every ``tick_step(n)``-th name, so 4 to 60 layers stay readable.

Imports nothing from the project.
"""
from __future__ import annotations

import math
import os
from typing import Optional, Sequence

import matplotlib

matplotlib.use('Agg')  # figures only go to files and TensorBoard, never to a window

import numpy as np  # noqa: E402
from matplotlib import patheffects  # noqa: E402
from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.font_manager import FontProperties  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.patches import Patch, Rectangle  # noqa: E402
from matplotlib.textpath import text_to_path  # noqa: E402

__all__ = ['group_colour', 'colour_range', 'cell_inches', 'font_points', 'tick_step', 'group_label', 'teacher_caption',
           'draw_matrix', 'teacher_figure', 'student_teacher_figure', 'matrices_figure', 'runs_figure', 'save_png']

# matplotlib's tab10: ten distinct hues, safe on white and (with a white halo) on viridis
_GROUP_COLOURS = ('#1f77b4', '#ff7f0e', '#2ca02c', '#d62728', '#9467bd',
                  '#8c564b', '#e377c2', '#7f7f7f', '#bcbd22', '#17becf')
# runs are told apart by line style and marker, leaving colour to the groups
_RUN_STYLES = (('-', 'o'), ('--', 's'), (':', '^'), ('-.', 'D'))
MAX_TICK_LABELS = 30
_HALO = [patheffects.withStroke(linewidth=3.5, foreground='white')]


def group_colour(index: int) -> str:
    """The colour of group ``index`` in every figure."""
    return _GROUP_COLOURS[index % len(_GROUP_COLOURS)]


def colour_range(values) -> tuple:
    """(vmin, vmax) of the colour scale: [0, 1], its lower end taken down to the next tenth below
    the smallest value when some are negative (debiased CKA can be)."""
    low = float(np.nanmin(np.asarray(values, dtype=np.float64)))
    return (min(0.0, math.floor(low * 10) / 10), 1.0)


def cell_inches(count: int) -> float:
    """Side of one matrix cell for a matrix whose longer side has ``count`` layers."""
    return float(np.clip(5.0 / max(count, 1), 0.13, 0.5))


def font_points(count: int) -> float:
    """Tick-label font size for ``count`` layers (smaller for long lists, 6 to 10 points)."""
    return float(np.clip(0.75 * 72 * cell_inches(count), 6.0, 10.0))


def tick_step(count: int) -> int:
    """Label every ``tick_step``-th layer so that at most MAX_TICK_LABELS names are shown."""
    return max(1, math.ceil(count / MAX_TICK_LABELS))


def group_label(index: int, layers: Sequence[int], names: Optional[Sequence[str]] = None) -> str:
    """'G1: 2-5 (layer1.1-layer2.0)': the group's index and its layer range."""
    first, last = int(layers[0]), int(layers[-1])
    span = f'{first}' if first == last else f'{first}-{last}'
    if names is None:
        return f'G{index}: {span}'
    words = names[first] if first == last else f'{names[first]}-{names[last]}'
    return f'G{index}: {span} ({words})'


def teacher_caption(settings: dict) -> str:
    """How a teacher matrix was measured, from the ``settings`` of its cka_groups.json record:
    'debiased linear CKA, block-level layers, 10 batches of 64 training images (seed 0)'."""
    text = (f"{settings.get('estimator', '?')} {settings.get('kernel', '?')} CKA, "
            f"{settings.get('layers', '?').rstrip('s')}-level layers, {settings.get('batches', '?')} batches of "
            f"{settings.get('batch_size', '?')} training images (seed {settings.get('seed', '?')})")
    if settings.get('teacher_split') == 'even':
        text += '; groups: even split (ablation)'
    return text


def _as_matrix(matrix) -> np.ndarray:
    if hasattr(matrix, 'detach'):
        matrix = matrix.detach().cpu().double().numpy()
    values = np.asarray(matrix, dtype=np.float64)
    if values.ndim != 2 or values.size == 0:
        raise ValueError(f'a CKA figure needs a non-empty 2-D matrix, got shape {values.shape}')
    return values


def _check_groups(groups, count: int, what: str) -> list:
    groups = [[int(i) for i in g] for g in groups]
    # paired groups may come in any order (a reversed pairing); sorted they must tile 0..count-1
    flat = [i for g in sorted(groups, key=lambda g: g[0] if g else -1) for i in g]
    if any(not g for g in groups) or flat != list(range(count)):
        raise ValueError(f'{what} must be non-empty contiguous runs covering 0..{count - 1}, got {groups}')
    return groups


def _set_ticks(ax, axis: str, names: Sequence[str], fontsize: float) -> None:
    step = tick_step(len(names))
    positions = list(range(0, len(names), step))
    labels = [str(names[i]) for i in positions]
    if axis == 'x':
        ax.set_xticks(positions, labels, rotation=90, fontsize=fontsize)
    else:
        ax.set_yticks(positions, labels, fontsize=fontsize)


def _box(ax, rows: Sequence[int], cols: Sequence[int], index: int, linewidth: float) -> None:
    box = Rectangle((cols[0] - 0.5, rows[0] - 0.5), len(cols), len(rows), fill=False,
                    edgecolor=group_colour(index), linewidth=linewidth, gid=f'group {index}',
                    path_effects=[patheffects.withStroke(linewidth=linewidth + 1.0, foreground='white')])
    ax.add_patch(box)


def draw_matrix(ax, matrix, row_names: Sequence[str], col_names: Sequence[str],
                row_groups: Sequence[Sequence[int]], col_groups: Sequence[Sequence[int]],
                group_values: Optional[Sequence[float]] = None, vmin: float = 0.0, vmax: float = 1.0,
                title: str = '', count: Optional[int] = None):
    """One matrix on ``ax``: names on both axes, group i's block outlined in its colour, its value
    written in it when ``group_values`` is given. Returns the image (for a colour bar)."""
    values = _as_matrix(matrix)
    rows, cols = values.shape
    if len(row_names) != rows or len(col_names) != cols:
        raise ValueError(f'{len(row_names)} row and {len(col_names)} column names for a {rows} x {cols} matrix')
    row_groups = _check_groups(row_groups, rows, 'row groups')
    col_groups = _check_groups(col_groups, cols, 'column groups')
    if len(row_groups) != len(col_groups):
        raise ValueError(f'{len(row_groups)} row groups and {len(col_groups)} column groups must pair up by index')
    if group_values is not None and len(group_values) != len(row_groups):
        raise ValueError(f'{len(group_values)} group values for {len(row_groups)} groups')
    count = count or max(rows, cols)
    fontsize = font_points(count)
    image = ax.imshow(values, cmap='viridis', vmin=vmin, vmax=vmax, interpolation='nearest', aspect='equal')
    _set_ticks(ax, 'x', col_names, fontsize)
    _set_ticks(ax, 'y', row_names, fontsize)
    linewidth = 2.5 if count <= 30 else 1.5
    for index, (r, c) in enumerate(zip(row_groups, col_groups)):
        _box(ax, r, c, index, linewidth)
        if group_values is not None:
            ax.text((c[0] + c[-1]) / 2, (r[0] + r[-1]) / 2, f'{group_values[index]:.2f}', ha='center',
                    va='center', fontsize=fontsize + 1, fontweight='bold', color='black', path_effects=_HALO,
                    gid=f'value {index}')
    if title:
        ax.set_title(title, fontsize=fontsize + 2)
    return image


def _colour_bar(fig, image, ax, vmin: float, vmax: float, fontsize: float, cax=None, room: float = 99.0):
    """The colour bar, its label stating the range; above the bar when the bar is shorter (``room``,
    inches) than the label."""
    bar = fig.colorbar(image, cax=cax) if cax is not None else fig.colorbar(image, ax=ax, shrink=0.9, pad=0.02)
    label = f'CKA (colour scale {vmin:g} to {vmax:g})'
    if _text_inches([label], fontsize)[0] < room:
        bar.set_label(label, fontsize=fontsize)
    else:
        bar.ax.set_title(f'CKA\n{vmin:g} to {vmax:g}', fontsize=fontsize)
    bar.ax.tick_params(labelsize=fontsize)
    return bar


def _new_figure(width: float, height: float, layout: Optional[str] = 'constrained') -> Figure:
    fig = Figure(figsize=(width, height), layout=layout)
    FigureCanvasAgg(fig)
    return fig


def _text_inches(texts: Sequence[str], size: float) -> tuple:
    """(widest width, tallest height) of ``texts`` at ``size`` points, in inches, without drawing."""
    prop = FontProperties(size=size)
    sizes = [text_to_path.get_text_width_height_descent(str(t), prop, ismath=False) for t in texts] or [(0, 0, 0)]
    return max(w for w, _, _ in sizes) / 72, max(h + d for _, h, d in sizes) / 72


def _single_matrix_figure(values, row_names, col_names, row_groups, col_groups, group_values, *, title: str,
                          xlabel: str, ylabel: str, caption: str, legend_labels: Optional[Sequence[str]]) -> Figure:
    """One matrix, its colour bar and (optionally) a group legend, placed in inches from measured
    text sizes: nothing is cut off whatever the layer names, and no layout solver runs (cheap
    enough for every epoch)."""
    rows, cols = values.shape
    count = max(rows, cols)
    cell, fontsize = cell_inches(count), font_points(count)
    vmin, vmax = colour_range(values)
    step_r, step_c = tick_step(rows), tick_step(cols)
    row_label_w, line_h = _text_inches(list(row_names)[::step_r], fontsize)
    col_label_w, _ = _text_inches(list(col_names)[::step_c], fontsize)
    label_h = _text_inches(['Ag'], fontsize + 1)[1]
    title_w, title_h = _text_inches([title], fontsize + 2)
    caption_w, caption_h = _text_inches([caption], fontsize) if caption else (0.0, 0.0)
    pad = 0.12
    width, height = cols * cell, rows * cell
    left = pad + label_h + pad + row_label_w + 0.1
    bottom = pad + (caption_h + pad if caption else 0) + label_h + pad + col_label_w + 0.1
    top = max(title_h, 2 * line_h) + 2 * pad
    bar_w = 0.16
    bar_label_w = _text_inches([f'{vmin:.1f}', f'{vmax:.1f}'], fontsize)[0]
    right = 0.2 + bar_w + 0.08 + bar_label_w + 0.1 + label_h + pad
    legend_w = legend_h = 0.0
    if legend_labels:
        text_w, text_h = _text_inches(legend_labels, fontsize)
        legend_w = text_w + 0.75
        legend_h = (len(legend_labels) + 1) * (text_h + 0.08) + 0.3
    fig_w = max(left + width + right + legend_w, title_w + 2 * pad, caption_w + 2 * pad)
    fig_h = max(bottom + height + top, legend_h + 2 * pad)
    fig = _new_figure(fig_w, fig_h, layout=None)
    ax = fig.add_axes((left / fig_w, bottom / fig_h, width / fig_w, height / fig_h))
    image = draw_matrix(ax, values, row_names, col_names, row_groups, col_groups, group_values, vmin, vmax,
                        title, count=count)
    ax.set_xlabel(xlabel, fontsize=fontsize + 1)
    ax.set_ylabel(ylabel, fontsize=fontsize + 1)
    cax = fig.add_axes(((left + width + 0.2) / fig_w, bottom / fig_h, bar_w / fig_w, height / fig_h))
    _colour_bar(fig, image, ax, vmin, vmax, fontsize, cax=cax, room=height)
    if legend_labels:
        handles = [Patch(fill=False, edgecolor=group_colour(i), linewidth=2, label=label)
                   for i, label in enumerate(legend_labels)]
        fig.legend(handles=handles, loc='upper left', fontsize=fontsize, title='groups', title_fontsize=fontsize,
                   bbox_to_anchor=((left + width + right) / fig_w, 1 - pad / fig_h))
    if caption:
        fig.text(0.5, pad / fig_h, caption, ha='center', va='bottom', fontsize=fontsize, gid='caption')
    return fig


def teacher_figure(matrix, layer_names: Sequence[str], groups: Sequence[Sequence[int]], *,
                   title: str = 'teacher CKA', caption: str = '') -> Figure:
    """The teacher's L x L CKA matrix with its groups on the diagonal, each group's index and layer
    range in the legend, ``caption`` (estimator, kernel, batches) under the figure."""
    legend = [group_label(i, g, layer_names) for i, g in enumerate(groups)]
    return _single_matrix_figure(_as_matrix(matrix), layer_names, layer_names, groups, groups, None, title=title,
                                 xlabel='teacher layer', ylabel='teacher layer', caption=caption,
                                 legend_labels=legend)


def student_teacher_figure(matrix, student_names: Sequence[str], teacher_names: Sequence[str],
                           student_groups: Sequence[Sequence[int]], teacher_groups: Sequence[Sequence[int]],
                           group_values: Sequence[float], *, title: str = 'student x teacher CKA',
                           caption: str = '') -> Figure:
    """The L_s x L_t matrix: student layers down, teacher layers across, the paired blocks
    outlined and each block's CKA_Gi written in it."""
    return _single_matrix_figure(_as_matrix(matrix), student_names, teacher_names, student_groups, teacher_groups,
                                 group_values, title=title, xlabel='teacher layer', ylabel='student layer',
                                 caption=caption, legend_labels=None)


def matrices_figure(teacher: dict, panels: Sequence[dict], *, caption: str = '') -> Figure:
    """The teacher's matrix (``teacher``: a cka_groups.json record) beside several final student x
    teacher matrices (``panels``: dicts with ``title`` and the keys of a cka_monitor.json record:
    ``matrix``, ``student_layers``, ``teacher_layers``, ``student_groups``, ``teacher_groups``,
    ``group_cka``), all on one colour scale, in a grid of about 2:1. Panels with the same layer
    names show them once: student names on the left column, teacher names under each column."""
    if not panels:
        raise ValueError('matrices_figure needs at least one student x teacher panel')
    teacher_values = _as_matrix(teacher['matrix'])
    everything = [teacher_values.ravel()] + [_as_matrix(p['matrix']).ravel() for p in panels]
    vmin, vmax = colour_range(np.concatenate(everything))
    count = max([teacher_values.shape[0]] + [max(_as_matrix(p['matrix']).shape) for p in panels])
    cell, fontsize = cell_inches(count), font_points(count)
    rows = max(_as_matrix(p['matrix']).shape[0] for p in panels)
    cols = max(_as_matrix(p['matrix']).shape[1] for p in panels)
    # wide panels (few student layers) two a row, squarer ones more, so the figure stays near 2:1
    columns = max(1, min(len(panels), round(math.sqrt(2 * len(panels) * rows / cols))))
    panel_rows = math.ceil(len(panels) / columns)
    shared = all(p['student_layers'] == panels[0]['student_layers']
                 and p['teacher_layers'] == panels[0]['teacher_layers'] for p in panels)
    names_w = _text_inches(list(teacher['layer_names']) + [n for p in panels for n in p['student_layers']
                                                           + p['teacher_layers']], fontsize)[0]
    title_h = 2 * _text_inches(['Ag'], fontsize + 2)[1] + 0.15
    panel_w = cols * cell + 0.25 + (0 if shared else names_w + 0.1)
    panel_h = rows * cell + title_h + (0 if shared else names_w + 0.1)
    grid_w = columns * panel_w + (names_w + 0.4 if shared else 0.3) + 1.1
    grid_h = panel_rows * panel_h + (names_w + 0.5 if shared else 0.3)
    side = teacher_values.shape[0] * cell
    legend_h = (len(teacher['groups']) + 1) * _text_inches(['Ag'], fontsize)[1] * 1.6
    teacher_w = side + names_w + 0.7
    height = max(side + names_w + title_h + legend_h + 0.9, grid_h) + (0.35 if caption else 0)
    fig = _new_figure(teacher_w + grid_w, height)
    left, right = fig.subfigures(1, 2, width_ratios=[teacher_w, grid_w])
    ax = left.add_subplot()
    image = draw_matrix(ax, teacher_values, teacher['layer_names'], teacher['layer_names'], teacher['groups'],
                        teacher['groups'], vmin=vmin, vmax=vmax, title='teacher', count=count)
    ax.set_xlabel('teacher layer', fontsize=fontsize + 1)
    handles = [Patch(fill=False, edgecolor=group_colour(i), linewidth=2,
                     label=group_label(i, g, teacher['layer_names'])) for i, g in enumerate(teacher['groups'])]
    left.legend(handles=handles, loc='outside lower center', fontsize=fontsize, title='teacher groups',
                title_fontsize=fontsize)
    axes = right.subplots(panel_rows, columns, squeeze=False)
    for index, (ax, panel) in enumerate(zip(axes.ravel(), panels)):
        draw_matrix(ax, panel['matrix'], panel['student_layers'], panel['teacher_layers'], panel['student_groups'],
                    panel['teacher_groups'], panel['group_cka'], vmin, vmax, panel['title'], count=count)
        if shared:
            below = index + columns < len(panels)
            ax.tick_params(labelleft=index % columns == 0, labelbottom=not below)
            if index % columns == 0:
                ax.set_ylabel('student layer', fontsize=fontsize + 1)
            if not below:
                ax.set_xlabel('teacher layer', fontsize=fontsize + 1)
    for ax in axes.ravel()[len(panels):]:
        ax.set_axis_off()
    _colour_bar(right, image, list(axes.ravel()), vmin, vmax, fontsize)
    if caption:
        fig.supxlabel(caption, fontsize=fontsize, gid='caption')
    return fig


def runs_figure(runs: Sequence[dict], *, caption: str = '') -> Figure:
    """One or several runs compared. ``runs``: dicts with ``label``, ``history`` (the records of
    cka_monitor.json / cka_matrices.json) and optionally ``metrics`` (metrics.json).

    Top: each run's final student x teacher matrix. Middle: each group's CKA over the epochs, one
    panel per run on a shared y axis, group i in ``group_colour(i)``. Bottom (when some run has
    metrics): test top-1 over the epochs, one line per run. Legends sit outside the axes."""
    if not runs:
        raise ValueError('runs_figure needs at least one run')
    with_accuracy = any(run.get('metrics') for run in runs)
    finals = [run['history'][-1] for run in runs]
    count = max(max(_as_matrix(f['matrix']).shape) for f in finals)
    cell = cell_inches(count)
    matrix_height = max(_as_matrix(f['matrix']).shape[0] for f in finals) * cell + 1.6
    panel_width = max(count * cell + 1.2, 3.2)
    heights = [matrix_height, 2.6] + ([2.6] if with_accuracy else [])
    fig = _new_figure(len(runs) * panel_width + 2.2, sum(heights) + 0.6)
    grid = fig.add_gridspec(len(heights), len(runs), height_ratios=heights)
    values = np.concatenate([_as_matrix(f['matrix']).ravel() for f in finals])
    vmin, vmax = colour_range(values)
    fontsize = font_points(count)
    matrix_axes, curve_axes = [], []
    for column, (run, final) in enumerate(zip(runs, finals)):
        ax = fig.add_subplot(grid[0, column])
        image = draw_matrix(ax, final['matrix'], final['student_layers'], final['teacher_layers'],
                            final['student_groups'], final['teacher_groups'], final['group_cka'], vmin, vmax,
                            f'{run["label"]}, epoch {final["epoch"]}', count=count)
        matrix_axes.append(ax)
        ax = fig.add_subplot(grid[1, column], sharey=curve_axes[0] if curve_axes else None)
        epochs = [h['epoch'] for h in run['history']]
        curves = np.asarray([h['group_cka'] for h in run['history']], dtype=np.float64)
        for group in range(curves.shape[1]):
            ax.plot(epochs, curves[:, group], color=group_colour(group), marker='o', markersize=3,
                    label=group_label(group, final['teacher_groups'][group], final['teacher_layers']))
        ax.set_title(f'{run["label"]}: group CKA', fontsize=fontsize + 1)
        ax.set_xlabel('epoch')
        ax.set_ylabel('group CKA' if column == 0 else '')
        ax.grid(alpha=0.3)
        curve_axes.append(ax)
    _colour_bar(fig, image, matrix_axes, vmin, vmax, fontsize)
    low = min(0.0, float(np.nanmin([np.nanmin([h['group_cka'] for h in run['history']]) for run in runs])))
    curve_axes[0].set_ylim(low - 0.02, 1.02)
    group_handles = [Line2D([], [], color=group_colour(g), marker='o', markersize=3,
                            label=group_label(g, finals[0]['teacher_groups'][g], finals[0]['teacher_layers']))
                     for g in range(len(finals[0]['teacher_groups']))]
    fig.legend(handles=group_handles, loc='outside right upper', fontsize=fontsize,
               title='teacher groups')
    if with_accuracy:
        ax = fig.add_subplot(grid[2, :])
        for index, run in enumerate(runs):
            metrics = run.get('metrics') or []
            style, marker = _RUN_STYLES[index % len(_RUN_STYLES)]
            ax.plot([m['epoch'] for m in metrics], [m['test/top1'] for m in metrics], color='black',
                    linestyle=style, marker=marker, markersize=3, label=run['label'])
        ax.set_xlabel('epoch')
        ax.set_ylabel('test top-1 (%)')
        ax.set_title('accuracy', fontsize=fontsize + 1)
        ax.grid(alpha=0.3)
        ax.legend(loc='upper left', bbox_to_anchor=(1.01, 1.0), fontsize=fontsize, title='runs')
    if caption:
        fig.supxlabel(caption, fontsize=fontsize, gid='caption')
    return fig


def save_png(fig: Figure, path: str, dpi: int = 110) -> str:
    """Write ``fig`` as a PNG (parent folders created); returns ``path``."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, format='png', dpi=dpi)
    return path
