"""Draw the README's figures (docs/results/*.png) from docs/results/figure_data.json.

    python scripts/draw_results_figures.py [--data docs/results/figure_data.json] [--out docs/results]

The data file holds, per PNG, what the project's figure builders take: a teacher matrix
(`teacher`, as `python scripts/cka_groups.py` draws it), the teacher's matrix beside each row's
final student x teacher matrix (`matrices`, as scripts/evidence.py draws it) or runs over the
epochs (`runs`, as scripts/plot_cka_runs.py draws it). Its `source` says where the numbers came from.
"""
import argparse
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from cka.heatmap import matrices_figure, runs_figure, save_png, teacher_figure  # noqa: E402

DPI = 80  # small files for the README; every label stays legible at this resolution


def build(spec: dict):
    if spec['figure'] == 'teacher':
        return teacher_figure(spec['matrix'], spec['layer_names'], spec['groups'], title=spec['title'],
                              caption=spec['caption'])
    if spec['figure'] == 'matrices':
        return matrices_figure(spec['teacher'], spec['panels'], caption=spec['caption'])
    if spec['figure'] == 'runs':
        return runs_figure(spec['runs'], caption=spec['caption'])
    raise SystemExit(f"error: unknown figure kind {spec['figure']!r}; use teacher, matrices or runs")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--data', default=os.path.join(ROOT, 'docs', 'results', 'figure_data.json'))
    parser.add_argument('--out', default=os.path.join(ROOT, 'docs', 'results'))
    args = parser.parse_args(argv)
    with open(args.data) as f:
        figures = json.load(f)['figures']
    for name, spec in figures.items():
        path = save_png(build(spec), os.path.join(args.out, name), dpi=DPI)
        print(f'wrote {path} ({os.path.getsize(path) // 1024} KB)')
    return 0


if __name__ == '__main__':
    sys.exit(main())
