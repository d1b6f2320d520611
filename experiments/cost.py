"""What a study costs at its declared budget, scaled from a smoke run measured on this machine."""
import statistics

from experiments.study import Study
from runtime.errors import ConfigError

CIFAR10_TRAIN_IMAGES, CIFAR10_CLASSES = 50000, 10


def smoke_pair(smoke: dict) -> tuple:
    """(teacher model, student model) a smoke run's records trained (the student None without runs)."""
    runs = smoke['runs']
    student = runs[0]['argv'][runs[0]['argv'].index('--model_s') + 1] if runs else None
    return smoke['teacher']['model'], student


def estimate_hours(study: Study, smoke: dict) -> dict:
    """CPU-hours of `study` at its declared budget, scaled from a smoke run's records: `smoke` =
    {'teacher': teacher.json, 'runs': [run records]} measured on this machine. Training time scales
    with images x epochs at the measured images/s; the rest of a run (evaluation, CKA grouping,
    monitor) is charged per epoch as measured. A row the smoke did not run is charged as the CKA row."""
    if study.dataset != 'cifar10':
        raise ConfigError(f'{study.source}: the estimate knows the CIFAR-10 set sizes only (50,000 training '
                          'images, 10 classes)')
    teacher_images = CIFAR10_TRAIN_IMAGES if study.teacher.train_per_class is None \
        else CIFAR10_CLASSES * study.teacher.train_per_class
    teacher_seconds = study.teacher.epochs * teacher_images / smoke['teacher']['images_per_s']
    timed = [r for r in smoke['runs'] if not r.get('resumed') and not r.get('reused_from')]
    student_images = CIFAR10_TRAIN_IMAGES if study.student.train_per_class is None \
        else CIFAR10_CLASSES * study.student.train_per_class
    student_seconds = {}
    for row in study.rows:
        runs = [r for r in timed if r['row'] == row] or [r for r in timed if r['row'] == study.cka_row]
        if not runs:
            raise ConfigError(f'the smoke results hold no run of row {row!r} (nor {study.cka_row}) to scale')
        ips = statistics.fmean(r['images_per_s'] for r in runs)
        overhead = statistics.fmean(max(0.0, r['seconds'] - r['epochs'] * r['epoch_seconds']) / r['epochs'] for r in runs)
        student_seconds[row] = study.student.epochs * (student_images / ips + overhead) * len(study.seeds)
    return {'teacher_hours': teacher_seconds / 3600, 'student_hours': {r: s / 3600 for r, s in student_seconds.items()},
            'total_hours': (teacher_seconds + sum(student_seconds.values())) / 3600}
