"""Compare the processing flow of several runs in one PNG.

    python scripts/plot_cka_runs.py RUN_DIR [RUN_DIR ...] --out cka_runs.png [--source monitor|ckagroup]

Top row: each run's final student x teacher CKA matrix (the teacher groups and the paired student
groups outlined). Bottom: each group's CKA over the epochs, one panel per run, a colour per group.
Reads `cka_monitor.json` (the monitor every method logs; default) or `cka_matrices.json` (the
training-batch matrices of --distill ckagroup). numpy + Pillow only.
"""
import argparse
import json
import os
import sys

import numpy as np
from PIL import Image, ImageDraw, ImageFont

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from cka.heatmap import heatmap_image  # noqa: E402

FILES = {'monitor': 'cka_monitor.json', 'ckagroup': 'cka_matrices.json'}
GROUP_COLOURS = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
                 (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207)]
PANEL = 260  # side of one panel in pixels


def load_history(run_dir: str, source: str) -> list:
    path = os.path.join(run_dir, FILES[source])
    if not os.path.exists(path):
        raise SystemExit(f'error: {path} not found; is {run_dir!r} a run folder with CKA '
                         f'{"monitoring" if source == "monitor" else "group training"}?')
    with open(path) as f:
        return json.load(f)


def run_label(run_dir: str) -> str:
    options = os.path.join(run_dir, 'options.json')
    if os.path.exists(options):
        with open(options) as f:
            opt = json.load(f)
        return f'{opt.get("distill", "?")} (b={opt.get("beta", "?")}, seed {opt.get("seed", "?")})'
    return os.path.basename(os.path.normpath(run_dir))


def curve_panel(history: list, title: str) -> Image.Image:
    image = Image.new('RGB', (PANEL, PANEL), 'white')
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default()
    left, top, right, bottom = 34, 22, PANEL - 8, PANEL - 24
    draw.rectangle([left, top, right, bottom], outline=(0, 0, 0))
    draw.text((4, 4), title[:40], fill=(0, 0, 0), font=font)
    epochs = [h['epoch'] for h in history]
    values = np.array([h['group_cka'] for h in history], dtype=float)
    low = min(0.0, float(np.nanmin(values)))
    span_e = max(max(epochs) - min(epochs), 1)

    def point(epoch, value):
        x = left + (epoch - min(epochs)) / span_e * (right - left)
        y = bottom - (value - low) / (1.0 - low) * (bottom - top)
        return x, y

    for tick in (low, 0.5, 1.0):
        y = point(min(epochs), tick)[1]
        draw.line([left - 3, y, left, y], fill=(0, 0, 0))
        draw.text((2, y - 6), f'{tick:.1f}', fill=(0, 0, 0), font=font)
    draw.text((left, bottom + 6), f'epoch {min(epochs)}', fill=(0, 0, 0), font=font)
    draw.text((right - 50, bottom + 6), f'epoch {max(epochs)}', fill=(0, 0, 0), font=font)
    for group in range(values.shape[1]):
        colour = GROUP_COLOURS[group % len(GROUP_COLOURS)]
        points = [point(e, v) for e, v in zip(epochs, values[:, group])]
        if len(points) > 1:
            draw.line(points, fill=colour, width=2)
        for x, y in points:
            draw.ellipse([x - 2, y - 2, x + 2, y + 2], fill=colour)
        draw.text((right - 28, top + 4 + 11 * group), f'G{group}', fill=colour, font=font)
    return image


def matrix_panel(record: dict, title: str) -> Image.Image:
    matrix = np.asarray(record['matrix'])
    cell = max(4, (PANEL - 40) // max(matrix.shape))  # fill the panel whatever the layer counts
    pixels = heatmap_image(matrix, record['student_groups'], record['teacher_groups'], cell=cell,
                           title=title[:40])
    image = Image.fromarray(pixels)
    image.thumbnail((PANEL, PANEL))
    canvas = Image.new('RGB', (PANEL, PANEL), 'white')
    canvas.paste(image, ((PANEL - image.width) // 2, 0))
    return canvas


def compose(run_dirs, source: str) -> Image.Image:
    histories = [load_history(d, source) for d in run_dirs]
    labels = [run_label(d) for d in run_dirs]
    figure = Image.new('RGB', (PANEL * len(run_dirs), 2 * PANEL), 'white')
    for column, (history, label) in enumerate(zip(histories, labels)):
        figure.paste(matrix_panel(history[-1], f'{label}, epoch {history[-1]["epoch"]}'), (column * PANEL, 0))
        figure.paste(curve_panel(history, f'{label}: group CKA'), (column * PANEL, PANEL))
    return figure


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('runs', nargs='+', help='run folders')
    parser.add_argument('--out', required=True, help='PNG to write')
    parser.add_argument('--source', choices=sorted(FILES), default='monitor')
    args = parser.parse_args(argv)
    compose(args.runs, args.source).save(args.out)
    print(f'wrote {args.out}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
