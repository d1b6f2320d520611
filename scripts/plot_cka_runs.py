"""Compare the processing flow of one or several runs in one PNG.

    python scripts/plot_cka_runs.py RUN_DIR [RUN_DIR ...] --out cka_runs.png [--source monitor|ckagroup]

Top: each run's final student x teacher CKA matrix (paired group blocks outlined, each block's
CKA_Gi written in it). Middle: each group's CKA over the epochs, one panel per run, group i in the
same colour in every panel and figure. Bottom: test top-1 over the epochs, one line per run (from
metrics.json). Reads `cka_monitor.json` (the monitor every method logs; default) or
`cka_matrices.json` (the training-batch matrices of --distill ckagroup).
"""
import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from cka.heatmap import runs_figure, save_png  # noqa: E402

FILES = {'monitor': 'cka_monitor.json', 'ckagroup': 'cka_matrices.json'}


def _read(path: str):
    with open(path) as f:
        return json.load(f)


def load_run(run_dir: str, source: str) -> dict:
    """A run folder as runs_figure takes it: label, CKA history and (when present) metrics."""
    path = os.path.join(run_dir, FILES[source])
    if not os.path.exists(path):
        raise SystemExit(f'error: {path} not found; is {run_dir!r} a run folder with CKA '
                         f'{"monitoring" if source == "monitor" else "group training"}?')
    history = _read(path)
    if not history:
        raise SystemExit(f'error: {path} holds no epoch yet; plot the run after its first epoch')
    metrics_path = os.path.join(run_dir, 'metrics.json')
    metrics = [m for m in _read(metrics_path) if 'test/top1' in m] if os.path.exists(metrics_path) else []
    return {'label': run_label(run_dir), 'history': history, 'metrics': metrics}


def run_label(run_dir: str) -> str:
    options = os.path.join(run_dir, 'options.json')
    if os.path.exists(options):
        opt = _read(options)
        return f'{opt.get("distill", "?")} (b={opt.get("beta", "?")}, seed {opt.get("seed", "?")})'
    return os.path.basename(os.path.normpath(run_dir))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('runs', nargs='+', help='run folders')
    parser.add_argument('--out', required=True, help='PNG to write')
    parser.add_argument('--source', choices=sorted(FILES), default='monitor')
    args = parser.parse_args(argv)
    runs = [load_run(d, args.source) for d in args.runs]
    caption = ('held-out monitor batches' if args.source == 'monitor'
               else 'training batches, epoch mean') + '; block values: group CKA of the epoch'
    save_png(runs_figure(runs, caption=caption), args.out)
    print(f'wrote {args.out}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
