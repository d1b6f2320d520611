"""Result files of the SimKD repo's train_teacher.py / train_student.py, written beside ours.

Scripts written for that repo read `parameters.json` (every option, `Total params` in millions,
`Total time` in hours) and `test_best_metrics.json` (the test metrics of the best epoch) in each
run folder, and overlay TensorBoard curves by the scalar names below. The teacher script rounds
its test metrics and `Total time` to two decimals; the student script does not.
tests/fixtures/family_flags.json records where each name comes from.
"""
from __future__ import annotations

PARAMETERS_FILE = 'parameters.json'
BEST_METRICS_FILE = 'test_best_metrics.json'
# our metrics.json key -> the family's TensorBoard scalar
FAMILY_SCALARS = {'train/top1': 'train_acc', 'train/loss': 'train_loss', 'test/top1': 'test_acc',
                  'test/top5': 'test_acc_top5', 'test/loss': 'test_loss'}


def _two_decimals(value: float) -> float:
    return float(f'{value:.2f}')


def best_metrics(test: dict, epoch: int, rounded: bool) -> dict:
    keep = _two_decimals if rounded else float
    return {'test_loss': keep(test['loss']), 'test_acc': keep(test['top1']),
            'test_acc_top5': keep(test['top5']), 'epoch': epoch}


def parameters(options: dict, model, seconds: float, rounded: bool) -> dict:
    """The options in name order, then the model's parameter count (millions) and the run time
    (hours)."""
    record = dict(sorted(options.items()))
    record['Total params'] = sum(p.numel() for p in model.parameters()) / 1e6
    hours = seconds / 3600.0
    record['Total time'] = _two_decimals(hours) if rounded else hours
    return record
