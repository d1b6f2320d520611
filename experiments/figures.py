"""Figures of the evidence runs (matplotlib, Agg: no display needed): every row's learning curve
over seeds, and a forest plot of paired differences with their confidence intervals."""
from typing import Dict, List, Sequence

import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def learning_curves(curves: Dict[str, Sequence[Sequence[float]]], title: str, ylabel: str) -> plt.Figure:
    """One line per row: the mean over seeds of the per-epoch top-1 (on the images `ylabel` names),
    with a band from the lowest to the highest seed (rows with one seed get no band). Curves are
    cut to the shortest seed of their row."""
    figure, axes = plt.subplots(figsize=(7, 4.5))
    for row, seeds in curves.items():
        length = min(len(c) for c in seeds)
        values = np.array([list(c)[:length] for c in seeds], dtype=float)
        epochs = np.arange(1, length + 1)
        line, = axes.plot(epochs, values.mean(axis=0), label=f'{row} (n={len(seeds)})')
        if len(seeds) > 1:
            axes.fill_between(epochs, values.min(axis=0), values.max(axis=0), color=line.get_color(), alpha=0.2)
    axes.set_xlabel('epoch')
    axes.set_ylabel(ylabel)
    axes.set_title(f'{title}: mean over seeds, band = min..max')
    axes.legend(loc='lower right', fontsize=8)
    axes.grid(alpha=0.3)
    figure.tight_layout()
    return figure


def forest_plot(differences: Dict[str, dict], baseline: str, title: str) -> plt.Figure:
    """One point per row at its mean paired difference against ``baseline`` with its interval
    (experiments.stats.paired_difference records); rows without an interval get a bare point."""
    rows: List[str] = [row for row, d in differences.items() if d['mean'] is not None]
    figure, axes = plt.subplots(figsize=(6.5, 0.5 * len(rows) + 1.6))
    for y, row in enumerate(rows):
        d = differences[row]
        if d['half_width'] is not None:
            axes.errorbar(d['mean'], y, xerr=d['half_width'], fmt='o', color='C0', capsize=4)
        else:
            axes.plot(d['mean'], y, 'o', color='C7')
    axes.axvline(0.0, color='black', linewidth=0.8)
    axes.set_yticks(range(len(rows)))
    axes.set_yticklabels([f'{row} (n={differences[row]["n"]})' for row in rows])
    axes.invert_yaxis()
    confidence = next((differences[r]['confidence'] for r in rows), 0.95)
    axes.set_xlabel(f'top-1 minus {baseline}, paired over seeds (points), {confidence:.0%} t-interval')
    axes.set_title(f'{title}: difference against {baseline}')
    axes.grid(axis='x', alpha=0.3)
    figure.tight_layout()
    return figure


def save(figure: plt.Figure, path: str) -> None:
    figure.savefig(path, dpi=110)
    plt.close(figure)
