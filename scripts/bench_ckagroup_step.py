"""Step time of --distill ckagroup against --distill kd, measured in one run.

    python scripts/bench_ckagroup_step.py [--teacher resnet32x4 --student resnet8x4 --batch_size 64
                                           --device cpu --repeats 10]

Both steps are the real training step of train_student.py (DistillObjective: teacher forward under
no_grad, student forward, CE + KD (+ the CKA-group term on block taps), backward, SGD step), on the
same random batch, timed alternately so that machine noise hits both alike. Prints a table and a
final ratio line (median ckagroup step / median kd step). Targets: <= 1.10 on CPU, <= 1.25 on an
H100/H200 at batch 64. The models are untrained: in eval mode the teacher's deeper block outputs
carry offsets (trace(K) / trace(HKH) up to 50) that send them through the shifted-Gram path of
cka.estimators, which a trained teacher's (about 2) skip, so the ratio is on the pessimistic side.
"""
import argparse
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import models  # noqa: E402
from distiller_zoo import DistillContext, build_distiller  # noqa: E402
from helper.checkpoint import freeze  # noqa: E402
from helper.loops import DistillObjective, to_batch  # noqa: E402
from helper.options import parse_student_options  # noqa: E402
from helper.teacher_groups import pair_teacher_groups  # noqa: E402


def make_step(method, teacher, args, device, images, targets):
    torch.manual_seed(0)
    student = models.build_model(args.student, num_classes=100).to(device)
    opt = parse_student_options(['--distill', method, '--batch_size', str(args.batch_size),
                                 '--cka_batches', '2', '-b', '1'])
    groups_data = torch.utils.data.TensorDataset(images.cpu(), targets.cpu())
    input_shape = tuple(images.shape[1:])
    groups = pair_teacher_groups(opt, student, teacher, args.teacher, input_shape, lambda: groups_data, device)
    ctx = DistillContext(student=student, teacher=teacher, student_name=args.student,
                         teacher_name=args.teacher, num_classes=100, input_shape=input_shape,
                         num_train_samples=len(images), device=device, opt=opt, groups=groups)
    distiller = build_distiller(method, ctx).to(device)
    objective = DistillObjective(student, teacher, distiller, opt)
    optimizer = torch.optim.SGD(list(student.parameters()) + list(distiller.parameters()), lr=0.01,
                                momentum=0.9)
    batch = to_batch((images, targets), device)
    objective.train()

    def step():
        loss, _, _ = objective(batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if device.type == 'cuda':
            torch.cuda.synchronize(device)

    return step


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--teacher', default='resnet32x4')
    parser.add_argument('--student', default='resnet8x4')
    parser.add_argument('--batch_size', type=int, default=64)
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    parser.add_argument('--repeats', type=int, default=10)
    parser.add_argument('--warmup', type=int, default=3)
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    teacher = models.build_model(args.teacher, num_classes=100).to(device)
    freeze(teacher)
    images = torch.randn(args.batch_size, 3, 32, 32, device=device)
    targets = torch.randint(0, 100, (args.batch_size,), device=device)
    steps = {method: make_step(method, teacher, args, device, images, targets) for method in ('kd', 'ckagroup')}
    for step in steps.values():
        for _ in range(args.warmup):
            step()
    times = {method: [] for method in steps}
    for _ in range(args.repeats):
        for method, step in steps.items():
            start = time.perf_counter()
            step()
            times[method].append(time.perf_counter() - start)
    name = torch.cuda.get_device_name(device) if device.type == 'cuda' else f'CPU, {torch.get_num_threads()} threads'
    print(f'{args.teacher} -> {args.student}, batch {args.batch_size}, {name}, torch {torch.__version__}')
    print(f'{"method":10s} {"median ms":>10s} {"min ms":>10s}')
    for method, values in times.items():
        print(f'{method:10s} {1000 * statistics.median(values):10.1f} {1000 * min(values):10.1f}')
    ratio = statistics.median(times['ckagroup']) / statistics.median(times['kd'])
    print(f'ratio ckagroup/kd step time: {ratio:.3f}')


if __name__ == '__main__':
    main()
