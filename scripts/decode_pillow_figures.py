"""One-off: recover the data behind the README's Pillow figures (drawn by helper/heatmap.py and
scripts/plot_cka_runs.py before matplotlib), whose run folders were not kept, so that the
figures can be drawn again with the matplotlib code.

The old heatmap coloured each 12-pixel cell with a known ramp (five viridis anchors, linear
interpolation, rounded to uint8), so a cell's value is the ramp position whose colour is nearest
to the cell's centre pixel; the old curve panels placed each epoch's dot at a known pixel. Each
recovered value is checked: the matrices by re-colouring, the group blocks against the exact
group CKA values of the committed results JSON, the curves at the last epoch likewise.

    python scripts/decode_pillow_figures.py   (reads the PNGs of commit 28d5ed4, writes docs/results/)
"""
import io
import json
import os
import subprocess
import sys

import numpy as np
from PIL import Image, ImageDraw, ImageFont

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
RESULTS = os.path.join(ROOT, 'docs', 'results')
PILLOW_COMMIT = '28d5ed4'  # the last commit whose docs/results/*.png were drawn with Pillow

import models  # noqa: E402
from helper.cka_groups import even_split  # noqa: E402

# the old helper/heatmap.py ramp and geometry
ANCHORS = np.array([[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]], dtype=np.float64)
RAMP_T = np.linspace(0.0, 1.0, 20001)


def ramp(t):
    pos = np.asarray(t) * 4
    lo = np.minimum(np.floor(pos).astype(int), 3)
    frac = (pos - lo)[..., None]
    return ANCHORS[lo] * (1 - frac) + ANCHORS[lo + 1] * frac


RAMP_RGB = ramp(RAMP_T)


def decode_colour(rgb):
    """The ramp position whose colour is nearest to rgb (None when none is within 2 levels; the
    evidence figures match a rounded ramp colour exactly, the grouping command's within 1-2)."""
    distance = np.abs(RAMP_RGB - np.asarray(rgb, dtype=np.float64)).max(axis=1)
    best = int(distance.argmin())
    if distance[best] > 2.0:
        return None
    close = distance <= distance[best] + 0.5
    return float(RAMP_T[close].mean())


def old_png(name):
    data = subprocess.run(['git', 'show', f'{PILLOW_COMMIT}:docs/results/{name}'], cwd=ROOT, check=True,
                          capture_output=True).stdout
    return np.asarray(Image.open(io.BytesIO(data)).convert('RGB'))


def title_height(title):
    probe = ImageDraw.Draw(Image.new('RGB', (1, 1)))
    x0, y0, x1, y1 = probe.textbbox((0, 0), title, font=ImageFont.load_default())
    return (y1 - y0) + 2 * 4


def decode_panel(pixels, x0, rows, cols, title, cell=12):
    top = title_height(title)
    matrix = np.empty((rows, cols))
    for i in range(rows):
        for j in range(cols):
            value = decode_colour(pixels[top + i * cell + cell // 2, x0 + j * cell + cell // 2])
            if value is None:
                raise SystemExit(f'{title}: cell ({i}, {j}) has no ramp colour')
            matrix[i, j] = value
    return matrix, top


def outline_is_red(pixels, x0, top, rows, cols, cell=12):
    """The old outline: 2 red pixels inside the block edges."""
    (r0, r1), (c0, c1) = rows, cols
    ys = [top + r0 * cell, top + (r1 + 1) * cell - 1]
    xs = [x0 + c0 * cell, x0 + (c1 + 1) * cell - 1]
    red = np.array([255, 0, 0])
    edges = [pixels[ys[0], xs[0]:xs[1] + 1], pixels[ys[1], xs[0]:xs[1] + 1],
             pixels[ys[0]:ys[1] + 1, xs[0]], pixels[ys[0]:ys[1] + 1, xs[1]]]
    return all((e == red).all() for e in edges)


def rows_of(results_file):
    with open(os.path.join(RESULTS, results_file)) as f:
        results = json.load(f)
    return results['settings']['rows'], {r['row']: r for r in results['runs'] if r['seed'] == 0}


def panel_groups(row, n_student, n_teacher, cka_groups):
    teacher = {'ckagroup_even_teacher_groups': even_split(n_teacher, 4),
               'ckagroup_1_group': [list(range(n_teacher))]}.get(row, cka_groups)
    student = even_split(n_student, len(teacher))
    if row == 'ckagroup_reversed_pairing':
        teacher = teacher[::-1]
    return student, teacher


def decode_matrices(png, results_file, teacher_arch, student_arch, cka_groups, caption):
    pixels = old_png(png)
    teacher_names = models.build_model(teacher_arch, 10).block_layer_names()
    student_names = models.build_model(student_arch, 10).block_layer_names()
    n_t, n_s = len(teacher_names), len(student_names)
    rows, seed0 = rows_of(results_file)
    teacher_matrix, top = decode_panel(pixels, 0, n_t, n_t, 'teacher')
    assert all(outline_is_red(pixels, 0, top, (g[0], g[-1]), (g[0], g[-1])) for g in cka_groups), png
    x0, panels, worst = n_t * 12 + 10, [], 0.0
    for row in rows:
        title = row[:28]
        matrix, top = decode_panel(pixels, x0, n_s, n_t, title)
        student_groups, teacher_groups = panel_groups(row, n_s, n_t, cka_groups)
        for s, t in zip(student_groups, teacher_groups):
            assert outline_is_red(pixels, x0, top, (s[0], s[-1]), (t[0], t[-1])), (png, row, s, t)
        exact = seed0[row]['monitor_groups']
        decoded = [float(matrix[np.ix_(s, t)].mean()) for s, t in zip(student_groups, teacher_groups)]
        # the outline covers the block's edge cells only at their border: centres stay readable
        worst = max(worst, max(abs(a - b) for a, b in zip(decoded, exact)))
        panels.append({'title': f'{row}\nseed 0, epoch 6', 'epoch': 6, 'student_layers': student_names,
                       'teacher_layers': teacher_names, 'student_groups': student_groups,
                       'teacher_groups': teacher_groups, 'matrix': np.round(matrix, 4).tolist(),
                       'group_cka': exact})
        x0 += n_t * 12 + 10
    print(f'{png}: {len(panels)} panels; decoded block means within {worst:.4f} of the exact group CKA')
    return {'figure': 'matrices', 'teacher': {'layer_names': teacher_names, 'matrix': np.round(teacher_matrix, 4).tolist(),
                                              'groups': cka_groups}, 'panels': panels, 'caption': caption,
            'decode_error_group_cka': round(worst, 4)}


def covered_dot(pixels, x_panel, y_panel, colour, epoch, values, left, top, right, bottom):
    """A dot hidden under another group's: read the group's own line 3 pixels either side of it
    (the neighbouring epochs' dots are known) and solve the line equation for the hidden value."""
    def x_of(e):
        return x_panel + left + e / 5 * (right - left)

    estimates = []
    for neighbour in (epoch - 1, epoch + 1):
        if not 0 <= neighbour < len(values) or np.isnan(values[neighbour]):
            continue
        step = 3 if neighbour > epoch else -3
        x = int(round(x_of(epoch))) + step
        column = (pixels[y_panel:y_panel + bottom + 3, x] == colour).all(axis=1)
        ys = np.nonzero(column)[0]
        if not len(ys):
            continue
        y_line = ys.mean()
        y_neighbour = bottom - values[neighbour] * (bottom - top)
        frac = (x - x_of(epoch)) / (x_of(neighbour) - x_of(epoch))
        y_dot = (y_line - frac * y_neighbour) / (1 - frac)
        estimates.append((bottom - y_dot) / (bottom - top))
    return float(np.mean(estimates)) if estimates else np.nan


def decode_flow(png, matrices_data, results_file):
    """The two-run comparison (kd and ckagroup, seed 0): final matrices are the evidence figure's
    panels (same runs, same monitor record); the curves are read from the dots of the old panels."""
    pixels = old_png(png)
    colours = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40)]
    left, top, right, bottom, panel = 34, 22, 252, 236, 260
    _, seed0 = rows_of(results_file)
    runs, worst = [], 0.0
    for column, (row, label) in enumerate((('kd', 'kd (b=0.0, seed 0)'), ('ckagroup', 'ckagroup (b=5.0, seed 0)'))):
        final = next(p for p in matrices_data['panels'] if p['title'].split('\n')[0] == row)
        curves = np.full((6, 4), np.nan)
        for epoch in range(1, 7):
            x = column * panel + left + (epoch - 1) / 5 * (right - left)
            xs = slice(int(round(x)) - 2, int(round(x)) + 3)
            for group, colour in enumerate(colours):
                band = (pixels[panel + top - 3:panel + bottom + 3, xs] == colour).all(axis=2).sum(axis=1)
                dot_rows = np.nonzero(band >= 4)[0]
                if len(dot_rows) and dot_rows[-1] - dot_rows[0] <= 5:
                    y = panel + top - 3 + (dot_rows[0] + dot_rows[-1]) / 2
                    curves[epoch - 1, group] = (panel + bottom - y) / (bottom - top)
        for epoch, group in zip(*np.nonzero(np.isnan(curves[:-1]))):  # a dot covered by a later group's
            curves[epoch, group] = covered_dot(pixels, column * panel, panel, colours[group], epoch, curves[:, group],
                                               left, top, right, bottom)
        exact = seed0[row]['monitor_groups']
        worst = max(worst, float(np.nanmax(np.abs(curves[-1] - exact))))
        curves[-1] = exact  # the last epoch is known exactly
        history = [{'epoch': e + 1, 'group_cka': [None if np.isnan(v) else round(float(v), 3) for v in curves[e]]}
                   for e in range(6)]
        history[-1] = dict(final, group_cka=exact)
        del history[-1]['title']
        runs.append({'label': label, 'history': history})
    print(f'{png}: dots of the last epoch within {worst:.4f} of the exact group CKA')
    return {'figure': 'runs', 'runs': runs, 'decode_error_last_epoch': round(worst, 4),
            'caption': 'held-out monitor batches (4 x 64 test images); block values: group CKA of the last epoch'}


def main():
    teacher_caption = 'debiased linear CKA, block-level layers, 10 batches of 64 training images (seed 0)'
    specs = [
        ('cifar10_10pct_cka_matrices.png', 'cifar10_10pct_results.json', 'resnet32', 'resnet8'),
        ('cifar10_10pct_resnet32_mobilenetv2_cka_matrices.png', 'cifar10_10pct_resnet32_mobilenetv2_results.json',
         'resnet32', 'MobileNetV2'),
        ('cifar10_10pct_resnet32x4_resnet8x4_cka_matrices.png', 'cifar10_10pct_resnet32x4_resnet8x4_results.json',
         'resnet32x4', 'resnet8x4'),
    ]
    groups = {'resnet32': [[0, 1], [2, 3, 4, 5], list(range(6, 12)), list(range(12, 16))],
              'resnet32x4': [[0, 1], [2, 3, 4, 5], list(range(6, 11)), list(range(11, 16))]}
    out = {}
    for png, results_file, teacher, student in specs:
        data = decode_matrices(png, results_file, teacher, student, groups[teacher], teacher_caption)
        out[png] = data
    out['cifar10_10pct_flow_kd_vs_ckagroup.png'] = decode_flow(
        'cifar10_10pct_flow_kd_vs_ckagroup.png', out['cifar10_10pct_cka_matrices.png'], 'cifar10_10pct_results.json')
    out['resnet32_cifar10_teacher_groups.png'] = decode_teacher('resnet32_cifar10_teacher_groups.png', 'resnet32',
                                                                 groups['resnet32'])
    source = ('decoded by scripts/decode_pillow_figures.py from the colours and dot positions of the '
              'earlier Pillow figures of the same names (their run folders were not kept); matrices '
              'to about 0.001 (values were clipped to [0, 1] in those figures), curves to about 0.01, '
              'group CKA of the final epoch exact from the results JSON')
    with open(os.path.join(RESULTS, 'figure_data.json'), 'w') as f:
        json.dump({'source': source, 'figures': out}, f, indent=1)
    print('wrote docs/results/figure_data.json')


def decode_teacher(png, arch, groups):
    """The grouping command's figure: one teacher matrix, 16-pixel cells, title and colour bar."""
    pixels = old_png(png)
    names = models.build_model(arch, 10).block_layer_names()
    matrix, top = decode_panel(pixels, 0, len(names), len(names), f'{arch} debiased CKA', cell=16)
    assert all(outline_is_red(pixels, 0, top, (g[0], g[-1]), (g[0], g[-1]), cell=16) for g in groups), png
    return {'figure': 'teacher', 'title': f'{arch} (CIFAR-10): teacher CKA', 'layer_names': names,
            'matrix': np.round(matrix, 4).tolist(), 'groups': groups,
            'caption': 'debiased linear CKA, block-level layers, training batches'}


if __name__ == '__main__':
    main()
