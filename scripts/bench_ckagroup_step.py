"""Cost of --distill ckagroup against --distill kd: step time, peak memory, teacher depth,
teacher-group precompute. Every figure is measured in this one run and printed with the machine.

    python scripts/bench_ckagroup_step.py                       # everything (--json FILE: also as JSON)
    python scripts/bench_ckagroup_step.py --parts step --runs 1 --repeats 10
    python scripts/bench_ckagroup_step.py --device cuda --compile reduce-overhead --json out.json

Parts (``--parts``, default all):

* ``step``: the real training step of train_student.py (DistillObjective: teacher forward under
  no_grad, student forward, CE + KD (+ the CKA-group term on block taps), backward, SGD step) on
  one random batch, kd and ckagroup steps **interleaved** so that machine noise hits both alike;
  ratio of medians, ``--runs`` times, on the classic path (float32) and the fast path (bf16
  autocast + channels_last, the forward of ``--amp --channels_last``; ``--data_on_device`` only
  changes the loader, not the step; ``--compile MODE`` adds torch.compile to the fast path).
  ``--term_compile on|off`` compiles the CKA term (``--cka_compile``) or keeps it eager; without
  it the run's default applies (compiled on CUDA and under ``--compile``).
  Targets: on a GPU ckagroup / kd <= 1.10 with the models eager (the term compiled) and <= 1.15
  with ``--compile reduce-overhead``; on a CPU no worse than the parent commit's ratio, measured
  the same way on the same machine.
  Each run also times the **Gram products alone** (float32, as the CKA term computes them: one
  batched n x n product per width group of teacher and student layers, and the student's
  one-product backward) and prints the floor ratio (kd + products) / kd: what ckagroup would cost
  were everything but these exact products free.
* ``memory``: peak memory of one step, after a warm-up step. ``peak_tensor_bytes``: the largest sum
  of the sizes of the tensor storages that the step allocated and that were alive at once (every
  operator's outputs tallied by a dispatch mode, each storage counted until it is freed), taken
  the same way on CPU and CUDA, so a CPU run predicts the GPU ratio; on CUDA also
  ``torch.cuda.max_memory_allocated`` over the step. Target: ckagroup <= 1.25 x kd.
* ``depth``: classic-path ratio for teachers of 16, 28 and 55 block layers (resnet32x4, resnet56,
  resnet110) with the ``--depth_student`` student, and a least-squares line through (teacher
  layers, extra ms of ckagroup over kd): the growth per teacher layer.
  The depth rows print the same floor.
* ``reduced``: why the CKA term keeps float32 products on the fast path. Under ``--amp`` the
  block outputs are bf16; a bf16 x bf16 product is exact in float32, but torch's CPU ``mm`` rounds
  its *output* to bf16 (a float32 output, ``out_dtype``, exists on CUDA only). The part times the
  teacher's and student's Gram products both ways and prints the largest CKA error of each
  against float64 on the same bf16 features (student x teacher matrix, debiased, the loss's
  estimator); the float32 path must stay within the tests' tolerance (1e-5).
* ``calls``: what a step asks of the host, counted, not timed (the same on any machine): the
  aten operator calls of one step (torch.profiler, innermost calls only) and its host reads
  (``tolist`` / ``item`` / ``bool`` / ``float`` / ``int`` of a tensor, each a wait for the device
  on a GPU), kd against ckagroup on both paths (the term as ``--term_compile`` says: a compiled
  term's kernels are not aten calls), and the graph breaks of the CKA
  term under ``torch._dynamo.explain`` (traced, not compiled: fast on any machine). On a GPU a
  step this small is bound by these, not by arithmetic. Targets: no host read; at most 150 extra
  aten calls over kd on the classic path and 200 on the fast path; no graph break.
* ``precompute``: the teacher-group precompute of a run (minibatch CKA of resnet32x4's 16 block
  layers over 10 batches of 64, then the grouping). Target: <= 15 s on 2 CPU cores.

The models are untrained (speed does not depend on the weights), but one thing of a trained
teacher matters: its BatchNorm statistics track its data. With the initial statistics (mean 0,
variance 1) the post-ReLU block outputs of an untrained eval-mode teacher carry offsets up to 50x
their spread (resnet32x4; resnet56 up to 240x), which sends those layers' Grams through the
shifted (second-product) path that a trained teacher's layers do not take. So by default
(``--teacher_bn data``) the teacher's statistics are first set from the benchmark's own batches
(forward passes in train mode under no_grad); ``--teacher_bn init`` keeps the initial ones.
The load average before and after each part is printed beside it: on a shared machine, compare
ratios, not milliseconds.
"""
import argparse
import contextlib
import json
import os
import statistics
import sys
import time
import weakref

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import models  # noqa: E402
from cka import centre_gram, cka_matrix, width_groups  # noqa: E402
from distiller_zoo.ckagroup import CKASettings, compute_teacher_groups  # noqa: E402
from experiments import stats  # noqa: E402
from experiments.provenance import cpu_model  # noqa: E402
from experiments.step_cost import build_step as build_row_step, build_teacher, interleaved, machine  # noqa: E402
from helper.options import parse_student_options  # noqa: E402

METHODS = ('kd', 'ckagroup')
DEPTH_TEACHERS = ('resnet32x4', 'resnet56', 'resnet110')


def load() -> str:
    return '/'.join(f'{v:.1f}' for v in os.getloadavg())


def build_step(method: str, teacher_name: str, student_name: str, batch_size: int, device: torch.device,
               fast: bool, compile_mode=None, teacher_bn: str = 'data', term_compile=None):
    """One training step of `method` on one random batch of 100 classes (`experiments.step_cost.
    build_step`: train_student.py's wiring and the run's SGD, here at lr 0.01 without weight decay).
    `term_compile` 'on' / 'off': --cka_compile (None: the run's default, and no flag, so the script
    also measures commits that predate it)."""
    torch.manual_seed(0)
    images = torch.randn(batch_size, 3, 32, 32)
    targets = torch.randint(0, 100, (batch_size,))
    teacher = build_teacher(teacher_name, 100, images.to(device), teacher_bn)
    argv = ['--distill', method, '--batch_size', str(batch_size), '--cka_batches', '2', '-b', '1',
            '--learning_rate', '0.01', '--weight_decay', '0']
    if fast:
        argv += ['--amp', '--channels_last']
    if term_compile is not None:
        argv += ['--cka_compile', term_compile]
    return build_row_step(argv, teacher, student_name, teacher_name,
                          train_set=torch.utils.data.TensorDataset(images, targets), index=torch.arange(batch_size),
                          num_classes=100, device=device, compile_mode=compile_mode if fast else None)


def flat_block_outputs(teacher_name: str, student_name: str, batch_size: int, device: torch.device,
                       amp: bool) -> dict:
    """{'teacher': [...], 'student': [...]}: each model's block outputs on one random batch
    (teacher BatchNorm statistics from that batch, as a trained teacher's), flattened per sample
    to contiguous (n, p); bf16 under `amp` (as an --amp forward gives them)."""
    torch.manual_seed(0)
    images = torch.randn(batch_size, 3, 32, 32, device=device)
    nets = {'teacher': build_teacher(teacher_name, 100, images, 'data'),
            'student': models.build_model(student_name, num_classes=100).to(device).eval()}
    flat = {}
    for role, model in nets.items():
        with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            outs = models.layer_outputs(model, images, 'blocks')
        flat[role] = [o.reshape(batch_size, -1).contiguous() for o in outs]
    return flat


def gram_products(teacher_name: str, student_name: str, batch_size: int, device: torch.device):
    """A callable taking the CKA term's float32 Gram products of one step and nothing else: one
    batched forward product per width group of teacher and of student block layers, and the
    student's one-product backward."""
    flat = flat_block_outputs(teacher_name, student_name, batch_size, device, amp=False)
    by_width = {role: [torch.stack([layers[i] for i in group]) for group in width_groups([y.shape[1] for y in layers])]
                for role, layers in flat.items()}
    teacher, student = by_width['teacher'], by_width['student']
    upstream = [torch.randn(y.shape[0], batch_size, batch_size, device=device) for y in student]

    def products():
        for y in teacher + student:
            torch.bmm(y, y.transpose(1, 2))
        for a, y in zip(upstream, student):
            torch.bmm(a, y)

    products.gflop = 2 * batch_size ** 2 * (sum(y.shape[1] for y in flat['teacher'])
                                            + 2 * sum(y.shape[1] for y in flat['student'])) / 1e9
    return products


def median_ms(work, repeats: int, device: torch.device) -> float:
    """Median wall time of `work()` over `repeats` calls after one warm-up call."""
    work()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        work()
        if device.type == 'cuda':
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def products_figures(products, repeats: int, kd_ms: float, device: torch.device) -> dict:
    ms = median_ms(products, repeats, device)
    return {'products_ms': ms, 'products_gflop': products.gflop, 'gflop_per_s': products.gflop / ms * 1000,
            'floor_ratio': (kd_ms + ms) / kd_ms}


def step_figures(times: dict) -> dict:
    out = {m: {'median_ms': 1000 * statistics.median(t), 'min_ms': 1000 * min(t), 'steps': len(t)}
           for m, t in times.items()}
    out['ratio'] = out['ckagroup']['median_ms'] / out['kd']['median_ms']
    return out


def part_step(args, device, where) -> dict:
    results = {}
    for path in args.paths:
        fast = path == 'fast'
        label = (path + (f' + compile {args.compile}' if fast and args.compile else '')
                 + (f', term compile {args.term_compile}' if args.term_compile else ''))
        steps = {m: build_step(m, args.teacher, args.student, args.batch_size, device, fast, args.compile,
                               args.teacher_bn, args.term_compile)
                 for m in METHODS}
        products = gram_products(args.teacher, args.student, args.batch_size, device)
        runs = []
        for run in range(args.runs):
            before = load()
            fig = step_figures(interleaved(steps, args.repeats, args.warmup if run == 0 else 1))
            fig['floor'] = products_figures(products, args.repeats, fig['kd']['median_ms'], device)
            fig['load'] = f'{before} -> {load()}'
            runs.append(fig)
            print(f'step {label:28s} run {run + 1}: kd {fig["kd"]["median_ms"]:8.1f} ms, ckagroup '
                  f'{fig["ckagroup"]["median_ms"]:8.1f} ms (medians of {args.repeats}; minima '
                  f'{fig["kd"]["min_ms"]:.1f} / {fig["ckagroup"]["min_ms"]:.1f}), ratio {fig["ratio"]:.3f}; '
                  f'{floor_text(fig["floor"])} [{where}; load {fig["load"]}]', flush=True)
        results[label] = runs
        del steps
    return results


def floor_text(floor: dict) -> str:
    return (f'Gram products alone {floor["products_ms"]:.1f} ms ({floor["products_gflop"]:.2f} GFLOP at '
            f'{floor["gflop_per_s"]:.0f} GFLOP/s), floor ratio {floor["floor_ratio"]:.3f}')


class StorageTally(TorchDispatchMode):
    """Live bytes of the tensor storages that operators allocate while it is active, and their
    peak: every operator output's storage is counted once, until it is freed. It sees what the
    step allocates the same way on any device (tensors alive before it started are not counted)."""

    def __init__(self):
        super().__init__()
        self.live = self.peak = 0
        self._counted = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for tensor in tree_flatten(out)[0]:
            if isinstance(tensor, torch.Tensor) and tensor.device.type != 'meta':
                self._count(tensor.untyped_storage())
        return out

    def _count(self, storage) -> None:
        key, size = storage.data_ptr(), storage.nbytes()
        if not size or key in self._counted:
            return
        self._counted.add(key)
        self.live += size
        self.peak = max(self.peak, self.live)
        weakref.finalize(storage, self._freed, key, size)

    def _freed(self, key, size) -> None:
        self._counted.discard(key)
        self.live -= size


def step_memory(step, device: torch.device) -> dict:
    """Peak tensor bytes of one step (after a warm-up step), and CUDA's max_memory_allocated."""
    step()  # warm-up: optimiser state and lazy buffers exist before the measured step
    figures = {}
    if device.type == 'cuda':
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        step()
        figures['max_memory_allocated'] = torch.cuda.max_memory_allocated(device)
        figures['max_memory_allocated_step'] = figures['max_memory_allocated'] - base
    with StorageTally() as tally:
        step()
    figures['peak_tensor_bytes'] = tally.peak
    return figures


def part_memory(args, device, where) -> dict:
    results = {}
    for path in args.paths:
        figures = {m: step_memory(build_step(m, args.teacher, args.student, args.batch_size, device, path == 'fast',
                                             args.compile if path == 'fast' else None, args.teacher_bn,
                                             args.term_compile), device)
                   for m in METHODS}
        figures['peak_tensor_ratio'] = figures['ckagroup']['peak_tensor_bytes'] / figures['kd']['peak_tensor_bytes']
        cuda = ''
        if device.type == 'cuda':
            figures['max_memory_allocated_ratio'] = (figures['ckagroup']['max_memory_allocated']
                                                     / figures['kd']['max_memory_allocated'])
            cuda = (f'; max_memory_allocated kd {figures["kd"]["max_memory_allocated"] / 2**20:.0f} MB, ckagroup '
                    f'{figures["ckagroup"]["max_memory_allocated"] / 2**20:.0f} MB, ratio '
                    f'{figures["max_memory_allocated_ratio"]:.3f}')
        print(f'memory {path:8s}: peak tensor bytes of a step kd {figures["kd"]["peak_tensor_bytes"] / 2**20:.1f} MB, '
              f'ckagroup {figures["ckagroup"]["peak_tensor_bytes"] / 2**20:.1f} MB, ratio '
              f'{figures["peak_tensor_ratio"]:.3f}{cuda} [{where}]', flush=True)
        results[path] = figures
    return results


def part_depth(args, device, where) -> dict:
    rows = []
    for teacher in DEPTH_TEACHERS:
        layers = len(models.build_model(teacher, num_classes=100).block_layer_names())
        steps = {m: build_step(m, teacher, args.depth_student, args.batch_size, device, False,
                               teacher_bn=args.teacher_bn, term_compile=args.term_compile) for m in METHODS}
        before = load()
        fig = step_figures(interleaved(steps, args.repeats, args.warmup))
        floor = products_figures(gram_products(teacher, args.depth_student, args.batch_size, device),
                                 args.repeats, fig['kd']['median_ms'], device)
        extra = fig['ckagroup']['median_ms'] - fig['kd']['median_ms']
        rows.append({'teacher': teacher, 'layers': layers, 'kd_ms': fig['kd']['median_ms'],
                     'ckagroup_ms': fig['ckagroup']['median_ms'], 'extra_ms': extra, 'ratio': fig['ratio'],
                     'floor': floor, 'load': f'{before} -> {load()}'})
        print(f'depth {teacher:10s} ({layers:2d} block layers) -> {args.depth_student}: kd '
              f'{fig["kd"]["median_ms"]:.1f} ms, ckagroup {fig["ckagroup"]["median_ms"]:.1f} ms, ratio '
              f'{fig["ratio"]:.3f}; {floor_text(floor)} [{where}; load {rows[-1]["load"]}]', flush=True)
        del steps
    layers = [r['layers'] for r in rows]
    fit = {'extra_ms_per_layer': stats.slope(layers, [r['extra_ms'] for r in rows]),
           'ratio_per_layer': stats.slope(layers, [r['ratio'] for r in rows])}
    print(f'depth fit: ckagroup costs {fit["extra_ms_per_layer"]:.2f} ms more per teacher block layer '
          f'(ratio +{fit["ratio_per_layer"]:.4f} per layer) [{where}]', flush=True)
    return {'rows': rows, 'fit': fit}


def _bf16_product_cka(student: list, teacher: list) -> torch.Tensor:
    """Debiased linear CKA matrix whose Grams are bf16 products rounded to bf16 (torch's CPU mm)."""
    def normalised(layers):
        grams = torch.stack([((y - y[:1]) @ (y - y[:1]).T).float() for y in layers])
        centred = centre_gram(grams, debiased=True).flatten(1)
        return centred / centred.norm(dim=1, keepdim=True)
    return normalised(student) @ normalised(teacher).T


def part_reduced(args, device, where) -> dict:
    flat = flat_block_outputs(args.teacher, args.student, args.batch_size, device, amp=True)
    assert flat['teacher'][0].dtype == torch.bfloat16
    reference = cka_matrix(flat['student'], flat['teacher'], 'linear', True, dtype=torch.float64)
    exact = cka_matrix(flat['student'], flat['teacher'], 'linear', True)
    reduced = _bf16_product_cka(flat['student'], flat['teacher'])
    layers = flat['teacher'] + flat['student']

    figures = {'float32_products_ms': median_ms(lambda: [y.float() @ y.float().T for y in layers],
                                                args.repeats, device),
               'bf16_products_ms': median_ms(lambda: [y @ y.T for y in layers], args.repeats, device),
               'float32_max_error': (exact.double() - reference).abs().max().item(),
               'bf16_max_error': (reduced.double() - reference).abs().max().item()}
    print(f'reduced: forward Gram products of the bf16 block outputs ({args.teacher} + {args.student}): float32 '
          f'{figures["float32_products_ms"]:.1f} ms, bf16 with bf16 output {figures["bf16_products_ms"]:.1f} ms; '
          f'largest CKA error against float64: float32 {figures["float32_max_error"]:.1e}, bf16 products '
          f'{figures["bf16_max_error"]:.1e} [{where}]', flush=True)
    return figures


HOST_READS = ('tolist', 'item', '__bool__', '__float__', '__int__')


def count_calls(step) -> dict:
    """Innermost aten calls and host reads (by the source line that asked) of one call of `step`."""
    from torch.profiler import ProfilerActivity, profile
    reads, originals = {}, {name: getattr(torch.Tensor, name) for name in HOST_READS}

    def counted(name):
        def read(tensor, *args, **kwargs):
            caller = sys._getframe(1)
            where = f'{os.path.basename(caller.f_code.co_filename)}:{caller.f_lineno}'
            reads[where] = reads.get(where, 0) + 1
            return originals[name](tensor, *args, **kwargs)
        return read

    with quiet_native_output(), profile(activities=[ProfilerActivity.CPU]) as prof:
        for name in HOST_READS:
            setattr(torch.Tensor, name, counted(name))
        try:
            step()
        finally:
            for name, original in originals.items():
                setattr(torch.Tensor, name, original)
    aten = [e for e in prof.events() if e.name.startswith('aten::')]
    innermost = sum(1 for e in aten if not any(c.name.startswith('aten::') for c in e.cpu_children))
    return {'aten_calls': innermost, 'host_reads': sum(reads.values()), 'host_reads_at': reads}


@contextlib.contextmanager
def quiet_native_output():
    """Silence what native code writes to the process's stdout and stderr (the profiler's start and
    stop lines, its 'gpuGetDeviceCount failed' on a machine without a GPU) inside the block."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    with open(os.devnull, 'w') as null:
        os.dup2(null.fileno(), 1)
        os.dup2(null.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)


def term_graph_breaks(step):
    """Graph breaks of the step's CKA term under torch._dynamo.explain (traced only, nothing
    compiled), on the step's own inputs; None where the distiller has no separate term (commits
    before it)."""
    distiller = step.distiller
    term = getattr(distiller, 'loss', None) and getattr(distiller.loss, 'term', None)
    if term is None or not hasattr(distiller, 'prepare_teacher'):
        return None
    objective, batch = step.objective, step.batch
    from helper.loops import model_outputs
    with torch.no_grad(), step.options.autocast(batch.images.device):
        teacher_out = distiller.prepare_teacher(model_outputs(objective.teacher, batch.images, distiller))
        student_feats = distiller.layers(model_outputs(objective.student, batch.images, distiller))
    torch._dynamo.reset()
    explanation = torch._dynamo.explain(term)(student_feats, teacher_out.prepared)
    return explanation.graph_break_count


def part_calls(args, device, where) -> dict:
    results = {}
    for path in args.paths:
        fast = path == 'fast'
        figures = {}
        for method in METHODS:
            step = build_step(method, args.teacher, args.student, args.batch_size, device, fast, None,
                              args.teacher_bn, args.term_compile)
            step(), step()  # warm: lazy initialisation is not the steady state
            figures[method] = count_calls(step)
            if method == 'ckagroup':
                figures[method]['graph_breaks'] = term_graph_breaks(step)
        results[path] = figures
        kd, cka = figures['kd'], figures['ckagroup']
        print(f'calls {path:7s}: aten calls kd {kd["aten_calls"]}, ckagroup {cka["aten_calls"]} '
              f'(+{cka["aten_calls"] - kd["aten_calls"]}); host reads kd {kd["host_reads"]}, ckagroup '
              f'{cka["host_reads"]} ({", ".join(f"{k} x{v}" for k, v in cka["host_reads_at"].items()) or "none"}); '
              f'graph breaks of the CKA term {cka["graph_breaks"]} [{where}]', flush=True)
    return results


def part_precompute(args, device, where) -> dict:
    torch.manual_seed(0)
    images = torch.randn(10 * 64, 3, 32, 32)
    teacher = build_teacher('resnet32x4', 100, images[:64].to(device), args.teacher_bn)
    data = torch.utils.data.TensorDataset(images, torch.zeros(10 * 64, dtype=torch.long))
    layers = models.layer_names(teacher, 'blocks', (3, 32, 32))
    before = load()
    start = time.perf_counter()
    settings = CKASettings.from_options(parse_student_options([]))  # a run's defaults: 4 groups from 10 batches
    record = compute_teacher_groups(teacher, settings, layers, data, 64, 0, device)
    if device.type == 'cuda':
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    print(f'precompute: teacher groups of resnet32x4 ({len(layers)} block layers) from 10 batches of 64 in '
          f'{seconds:.1f} s (groups {record["groups"]}) [{where}; load {before} -> {load()}]', flush=True)
    return {'seconds': seconds, 'layers': len(layers), 'batches': 10, 'batch_size': 64}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--teacher', default='resnet32x4')
    parser.add_argument('--student', default='resnet8x4')
    parser.add_argument('--depth_student', default='resnet8')
    parser.add_argument('--batch_size', type=int, default=64)
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    parser.add_argument('--repeats', type=int, default=10, help='interleaved steps per method and run')
    parser.add_argument('--warmup', type=int, default=2)
    parser.add_argument('--runs', type=int, default=2, help='step-time runs per path')
    parser.add_argument('--compile', default=None, help='torch.compile mode for the fast path (e.g. reduce-overhead)')
    parser.add_argument('--paths', nargs='+', choices=['classic', 'fast'], default=['classic', 'fast'],
                        help='the paths the step, memory and calls parts measure (the fast path on a CPU without '
                             'native bf16 is slow: bf16 is emulated there)')
    parser.add_argument('--term_compile', choices=['on', 'off'], default=None,
                        help="compile the CKA term (--cka_compile on) or keep it eager; default: the run's own choice "
                             '(and no --cka_compile flag, so that commits before it can be measured too)')
    parser.add_argument('--parts', nargs='+', default=['step', 'memory', 'depth', 'reduced', 'calls', 'precompute'],
                        choices=['step', 'memory', 'depth', 'reduced', 'calls', 'precompute'])
    parser.add_argument('--teacher_bn', choices=['data', 'init'], default='data',
                        help="teacher BatchNorm statistics: set from the benchmark's batches (as a trained "
                             "teacher's track its data) or the initial ones")
    parser.add_argument('--json', default=None, help='also write every figure to this JSON file')
    args = parser.parse_args()
    device = torch.device(args.device)
    where = machine(device)
    print(f'{args.teacher} -> {args.student}, batch {args.batch_size}, block taps, teacher BatchNorm statistics '
          f'{args.teacher_bn}; {where}', flush=True)
    started = time.perf_counter()
    parts = {'step': part_step, 'memory': part_memory, 'depth': part_depth, 'reduced': part_reduced,
             'calls': part_calls, 'precompute': part_precompute}
    results = {'machine': where, 'cpu_model': cpu_model(), 'teacher': args.teacher, 'student': args.student,
               'batch_size': args.batch_size, 'compile': args.compile, 'term_compile': args.term_compile,
               'teacher_bn': args.teacher_bn}
    for name in args.parts:
        results[name] = parts[name](args, device, where)
    results['seconds'] = time.perf_counter() - started
    print(f'done in {results["seconds"]:.0f} s', flush=True)
    if args.json:
        with open(args.json, 'w') as f:
            json.dump(results, f, indent=1)


if __name__ == '__main__':
    main()
