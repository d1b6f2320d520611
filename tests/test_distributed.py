"""Multi-process training on CPU with gloo, 2 processes: torchrun and --multiprocessing-distributed
end to end, the reductions and gathers against one process on the concatenated batch, the DDP
unused-parameter rule for every method, and clean failures (port in use, a dying rank, ranks that
disagree). Spawned workers are module-level functions of this file."""
import argparse
import glob
import json
import os
import socket
import subprocess
import sys
import time

import pytest
import torch
import torch.nn.functional as F

from conftest import ROOT, distillation, save_teacher, synthetic_test_top1, tiny_argv
from crd.memory import ContrastMemory
from helper import distributed
from runtime import collectives
from runtime.errors import ConfigError, DistributedFailure

# 100 training images: 50 per rank; --batch_size 32 per node, so batches of 16, 16, 16, 2 per rank;
# 50 test images, 25 per rank.
TINY = tiny_argv(10, 5, 32, 2, 0.02, '--epochs', '2', '--dist_timeout', '60')
ENV = {**os.environ, 'OMP_NUM_THREADS': '1', 'PYTHONPATH': ROOT}  # torchrun's default too


def _store(folder):
    """A file:// rendezvous for spawned test ranks: no port that another job could take."""
    return f'file://{os.path.join(str(folder), "store")}'


@pytest.fixture(scope='module')
def teacher_path(tmp_path_factory):
    return save_teacher(tmp_path_factory.mktemp('teacher'), 'resnet8', record_arch=True)[0]


def _run_dir(save):
    (run_dir,) = (save / 'students').iterdir()
    return run_dir


def _evaluate_checkpoint(run_dir):
    """Top-1 of the saved student on the whole test set, in this one process."""
    import models
    from helper.setup import load_data
    ckpt = torch.load(run_dir / 'ckpt_last.pth', weights_only=True)
    student = models.build_model(ckpt['arch'], num_classes=10)
    student.load_state_dict(ckpt['model'])
    student.eval()
    data = load_data(argparse.Namespace(**ckpt['opt']))
    images = torch.stack([data.val[i][0] for i in range(len(data.val))])
    targets = torch.tensor([data.val[i][1] for i in range(len(data.val))])
    with torch.no_grad():
        return (student(images).argmax(1) == targets).float().mean().item() * 100


# --------------------------------------------------------------------------- end to end
@pytest.mark.parametrize('method', ['kd', 'ckagroup'])
def test_torchrun_two_processes(method, teacher_path, tmp_path):
    extra = ['-b', '1', '--cka_groups', '2', '--cka_batches', '2', '--cka_gather'] if method == 'ckagroup' else []
    save = tmp_path / 'save'
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node', '2',
           os.path.join(ROOT, 'train_student.py')] + TINY + [
        '--path_t', str(teacher_path), '--model_s', 'resnet8', '--distill', method,
        '--save_dir', str(save)] + extra
    result = subprocess.run(cmd, cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    run_dir = _run_dir(save)
    summary = json.loads((run_dir / 'summary.json').read_text())
    assert summary['world_size'] == 2 and summary['ranks_in_sync'] is True
    _assert_batch_shared_by_two(result.stdout, run_dir)
    # Rank 0 alone prints and writes: one progress stream, one events file, no stray files.
    assert result.stdout.count('finished:') == 1 and result.stdout.count('epoch 2:') == 1
    assert len(glob.glob(str(run_dir / 'events.out.tfevents.*'))) == 1
    expected = {'options.json', 'metrics.json', 'summary.json', 'ckpt_last.pth', 'resnet8_best.pth',
                'teacher_accuracy.json', 'cka_groups.json', 'cka_groups.png', 'cka_monitor.json',  # monitoring: every method
                'parameters.json', 'test_best_metrics.json'}  # the family's files
    if method == 'ckagroup':
        expected |= {'cka_matrices.json'}
    assert {p.name for p in run_dir.iterdir() if not p.name.startswith('events.')} == expected
    history = json.loads((run_dir / 'metrics.json').read_text())
    assert [r['epoch'] for r in history] == [1, 2]
    # The logged test accuracy is that of the whole test set, each image counted once.
    assert history[-1]['test/top1'] == pytest.approx(_evaluate_checkpoint(run_dir), abs=1e-4)
    if method == 'ckagroup':
        matrices = json.loads((run_dir / 'cka_matrices.json').read_text())
        assert [m['epoch'] for m in matrices] == [1, 2]
        assert history[-1]['cka/group_0'] == pytest.approx(matrices[-1]['group_cka'][0], abs=1e-6)


def _assert_batch_shared_by_two(stdout, run_dir):
    """--batch_size 32 per node over 2 processes: 16 each (the older repos' rule), said once; each
    rank's 50 images then take 4 steps (16, 16, 16, 2)."""
    assert stdout.count('each of its 2 processes takes --batch_size 16, --num_workers 0') == 1, stdout[-3000:]
    assert stdout.count('epoch 1 [4/4]') == 1 and '[2/4]' in stdout
    options = json.loads((run_dir / 'options.json').read_text())
    assert (options['batch_size'], options['batch_size_per_node']) == (16, 32)
    assert json.loads((run_dir / 'parameters.json').read_text())['batch_size'] == 16


def test_multiprocessing_distributed_on_cpu(teacher_path, tmp_path, capfd):
    from helper.train import run_student
    save = tmp_path / 'save'
    summary = run_student(TINY + ['--path_t', str(teacher_path), '--model_s', 'resnet8', '--distill', 'crd',
                                  '-b', '0.8', '--nce_k', '16', '--feat_dim', '16', '--skip-validation',
                                  '--save_dir', str(save), '--multiprocessing-distributed', '--nproc', '2',
                                  '--dist-url', _store(tmp_path)])
    # ranks_in_sync covers the student, the distiller (CRD embeddings, memory bank) and the optimiser.
    assert summary['world_size'] == 2 and summary['ranks_in_sync'] is True and summary['epochs'] == 2
    run_dir = _run_dir(save)
    _assert_batch_shared_by_two(capfd.readouterr().out, run_dir)
    assert json.loads((run_dir / 'summary.json').read_text()) == summary
    assert len(glob.glob(str(run_dir / 'events.out.tfevents.*'))) == 1


def test_data_on_device_with_two_processes(teacher_path, tmp_path):
    """--data_on_device in a distributed run: each rank takes its DistributedSampler shard of the
    set held on its device and evaluates its ShardSampler part; the ranks stay in sync."""
    from helper.train import run_student
    save = tmp_path / 'save'
    summary = run_student(TINY + ['--path_t', str(teacher_path), '--model_s', 'resnet8', '--distill', 'kd',
                                  '--skip-validation', '--save_dir', str(save), '--data_on_device',
                                  '--multiprocessing-distributed', '--nproc', '2', '--dist-url', _store(tmp_path)])
    assert summary['world_size'] == 2 and summary['ranks_in_sync'] is True and summary['epochs'] == 2
    history = json.loads((_run_dir(save) / 'metrics.json').read_text())
    # top-1 over the whole test set, counted once: a multiple of 100 / (number of test images)
    test_images = 10 * int(TINY[TINY.index('--val_per_class') + 1])
    assert all(abs(h['test/top1'] * test_images / 100 - round(h['test/top1'] * test_images / 100)) < 1e-6
               for h in history)


def test_final_test_evaluation_with_two_processes(teacher_path, tmp_path):
    """--val_split_per_class in a distributed run: the epochs evaluate the held-out split and the
    last weights are evaluated once on the full test set, each rank its ShardSampler part, the sums
    added: the result of one float64 evaluation of the saved checkpoint over every test image."""
    from helper.train import run_student
    save = tmp_path / 'save'
    at = TINY.index('--val_per_class')
    held_out = TINY[:at] + ['--val_split_per_class', '5'] + TINY[at + 2:]
    summary = run_student(held_out + ['--path_t', str(teacher_path), '--model_s', 'resnet8', '--distill', 'kd',
                                      '--skip-validation', '--save_dir', str(save), '--data_on_device',
                                      '--multiprocessing-distributed', '--nproc', '2', '--dist-url', _store(tmp_path)])
    assert summary['world_size'] == 2 and summary['ranks_in_sync'] is True
    top1, images = synthetic_test_top1(_run_dir(save) / 'ckpt_last.pth')
    assert summary['test_images'] == images
    assert summary['test_top1'] == pytest.approx(top1, abs=1e-4)


# --------------------------------------------------------------------------- collectives
def _collectives_worker(rank, url, out_dir):
    from distiller_zoo.ckagroup import CKAGroupLoss
    from helper.loops import _Sums, validate

    torch.set_num_threads(1)
    distributed.init_process('cpu', rank, 2, rank, url, 'test', 30)
    results = {}
    # Metric sums: different keys and counts on the two ranks.
    sums = _Sums()
    if rank == 0:
        sums.add({'loss': torch.tensor(1.0), 'top1': torch.tensor(50.0)}, 4)
        sums.add({'loss': torch.tensor(3.0), 'top1': torch.tensor(25.0)}, 2)
    else:
        sums.add({'loss': torch.tensor(2.0), 'extra': torch.tensor(7.0)}, 3)
    results['means'] = sums.means()
    results['count'] = sums.total_count
    # Sharded evaluation of 11 samples (6 + 5, batches of 4).
    model, images, targets = _eval_problem()
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(images, targets), batch_size=4,
                                         sampler=collectives.ShardSampler(len(images)))
    results['validate'] = validate(model, loader, torch.device('cpu'))
    # --cka_gather: rows 0-5 on rank 0, 6-9 on rank 1.
    student, teacher, rows = _cka_problem(rank)
    local = [s[rows].clone().requires_grad_(True) for s in student]
    loss_fn = CKAGroupLoss([[0], [1]], [[0, 1], [2]])
    gathered_s = collectives.gather_rows(local, with_grad=True)
    gathered_t = collectives.gather_rows([t[rows] for t in teacher], with_grad=False)
    loss, _, matrix = loss_fn(gathered_s, gathered_t)
    loss.backward()
    results['cka'] = {'loss': loss.item(), 'matrix': matrix, 'grads': [x.grad for x in local]}
    # CRD memory bank: sample 0 on both ranks (as DistributedSampler's padding can do).
    memory, v_s, v_t, idx, contrast = _crd_problem()
    part = slice(0, 5) if rank == 0 else slice(5, 8)
    memory.train()
    memory(v_s[part], v_t[part], idx[part], contrast[part])
    results['crd'] = {k: v.clone() for k, v in memory.state_dict().items()}
    results['crd_digest'] = collectives.state_digest(memory.state_dict())
    torch.save(results, os.path.join(out_dir, f'rank{rank}.pt'))
    distributed.cleanup()


def _eval_problem():
    gen = torch.Generator().manual_seed(3)
    model = torch.nn.Linear(5, 7)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen))
    return model, torch.randn(11, 5, generator=gen), torch.randint(0, 7, (11,), generator=gen)


def _cka_problem(rank):
    gen = torch.Generator().manual_seed(1)
    student = [torch.randn(10, 3, 2, 2, generator=gen), torch.randn(10, 6, generator=gen)]
    base = torch.randn(10, 5, generator=gen)
    teacher = [base + 0.3 * torch.randn(10, 5, generator=gen), torch.randn(10, 4, generator=gen), base]
    return student, teacher, (slice(0, 6) if rank == 0 else slice(6, 10))


def _crd_problem():
    torch.manual_seed(5)
    memory = ContrastMemory(4, n_data=12, k=3, momentum=0.5)
    gen = torch.Generator().manual_seed(6)
    v_s = F.normalize(torch.randn(8, 4, generator=gen), dim=1)
    v_t = F.normalize(torch.randn(8, 4, generator=gen), dim=1)
    idx = torch.tensor([0, 1, 2, 3, 4, 0, 5, 6])
    contrast = torch.cat([idx.view(-1, 1), torch.randint(0, 12, (8, 3), generator=gen)], dim=1)
    return memory, v_s, v_t, idx, contrast


@pytest.fixture(scope='module')
def rank_results(tmp_path_factory):
    out = tmp_path_factory.mktemp('collectives')
    distributed.spawn(_collectives_worker, 2, (_store(out), str(out)))
    return [torch.load(out / f'rank{r}.pt', weights_only=False) for r in range(2)]


def test_metric_sums_are_reduced_over_ranks(rank_results):
    expected = {'loss': (1 * 4 + 3 * 2 + 2 * 3) / 9, 'top1': (50 * 4 + 25 * 2) / 9, 'extra': 7 * 3 / 9}
    for result in rank_results:
        assert result['count'] == 9
        assert result['means'] == pytest.approx(expected, rel=1e-6)


def test_sharded_validation_counts_every_sample_once(rank_results):
    from helper.loops import validate
    model, images, targets = _eval_problem()
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(images, targets), batch_size=4)
    whole = validate(model, loader, torch.device('cpu'))
    for result in rank_results:
        assert result['validate'] == pytest.approx(whole, rel=1e-6)
    assert [list(collectives.ShardSampler(11, r, 2)) for r in range(2)] == [[0, 2, 4, 6, 8, 10], [1, 3, 5, 7, 9]]


def test_cka_gather_equals_one_process_on_the_global_batch(rank_results):
    from distiller_zoo.ckagroup import CKAGroupLoss
    student, teacher, _ = _cka_problem(0)
    student = [s.clone().requires_grad_(True) for s in student]
    loss, _, matrix = CKAGroupLoss([[0], [1]], [[0, 1], [2]])(student, teacher)
    loss.backward()
    for rank, result in enumerate(rank_results):
        cka = result['cka']
        torch.testing.assert_close(cka['matrix'], matrix, rtol=1e-5, atol=1e-6)
        assert cka['loss'] == pytest.approx(loss.item(), rel=1e-5)
        rows = slice(0, 6) if rank == 0 else slice(6, 10)
        # Each rank gets world_size x its rows' gradient; DDP's average over ranks makes it exact.
        for grad, full in zip(cka['grads'], student):
            torch.testing.assert_close(grad, 2 * full.grad[rows], rtol=1e-4, atol=1e-6)


def test_crd_memory_bank_is_updated_from_every_rank(rank_results):
    memory, v_s, v_t, idx, contrast = _crd_problem()
    reference = memory
    reference.eval()
    reference(v_s, v_t, idx, contrast)  # Z from the global batch, no update
    for bank, v in ((reference.memory_s, v_s), (reference.memory_t, v_t)):
        first = [0, 1, 2, 3, 4, 6, 7]  # sample 0 is updated from its first occurrence
        pos = bank[idx[first]] * 0.5 + v[first] * 0.5
        bank[idx[first]] = pos / pos.norm(dim=1, keepdim=True)
    assert rank_results[0]['crd_digest'] == rank_results[1]['crd_digest']
    for key, value in reference.state_dict().items():
        torch.testing.assert_close(rank_results[0]['crd'][key], value, rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------- DDP rule
def test_unused_parameter_rule_holds_for_every_method():
    """DDP needs find_unused_parameters exactly when a step leaves some trainable parameter
    without a gradient; the rule in helper.loops must agree with one real step of each method."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny convolutions: extra threads only contend with other jobs
    try:
        _check_unused_rule()
    finally:
        torch.set_num_threads(threads)


def _check_unused_rule():
    import models
    from distiller_zoo import distiller_names
    from distiller_zoo.base import Batch
    from helper.loops import find_unused_parameters
    from helper.options import parse_student_options

    torch.manual_seed(0)
    images, targets = torch.randn(8, 3, 32, 32), torch.arange(8) % 10
    data = torch.utils.data.TensorDataset(torch.randn(16, 3, 32, 32), torch.arange(16) % 10)
    for method in distiller_names():
        opt = parse_student_options(['--distill', method, '-b', '1', '--nce_k', '4', '--feat_dim', '8',
                                     '--cka_groups', '2', '--cka_batches', '1', '--batch_size', '8'])
        teacher, student = models.build_model('resnet8', 10).eval(), models.build_model('resnet8', 10)
        for p in teacher.parameters():
            p.requires_grad_(False)
        wired = distillation(student, teacher, opt, num_train_samples=16, train_set=data, names=('resnet8', 'resnet8'))
        distiller, objective = wired.distiller, wired.objective
        objective.train()
        index = torch.arange(8)
        contrast = torch.cat([index.view(-1, 1), (index.view(-1, 1) + torch.arange(1, 5)) % 16], dim=1)
        loss, _, _ = objective(Batch(images, targets, (index, contrast)))
        loss.backward()
        unused = [n for n, p in objective.module.named_parameters() if p.requires_grad and p.grad is None]
        assert bool(unused) == find_unused_parameters(distiller), (method, unused)


# --------------------------------------------------------------------------- failures
def _assert_one_line_error(result, *words):
    assert result.returncode != 0
    lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and 'Traceback' not in result.stderr, result.stderr
    for word in words:
        assert word in lines[0], lines[0]


def test_port_in_use_is_one_line_and_quick(teacher_path, tmp_path):
    with socket.socket() as busy:
        busy.bind(('127.0.0.1', 0))
        busy.listen()
        port = busy.getsockname()[1]
        url = f'tcp://127.0.0.1:{port}'
        start = time.time()
        result = subprocess.run(
            [sys.executable, os.path.join(ROOT, 'train_student.py')] + TINY +
            ['--path_t', str(teacher_path), '--model_s', 'resnet8', '--save_dir', str(tmp_path),
             '--multiprocessing-distributed', '--nproc', '2', '--dist-url', url],
            cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=60)
        _assert_one_line_error(result, '--dist-url', str(port), 'in use')
        assert result.returncode == 2 and time.time() - start < 30
        # The same port met inside a rank (a race after the check): one line naming --dist-url.
        with pytest.raises(ConfigError, match='--dist-url.*in use'):
            distributed.init_process('cpu', 0, 1, 0, url, f'--dist-url {url}', timeout_s=10)
    assert not collectives.is_distributed()


def test_batch_that_does_not_divide_stops_both_launchers_with_one_line(teacher_path, tmp_path, capsys):
    from helper.train import main, run_student
    odd = TINY + ['--batch_size', '31', '--path_t', str(teacher_path), '--model_s', 'resnet8',
                  '--save_dir', str(tmp_path / 'save')]
    assert main(run_student, odd + ['--multiprocessing-distributed', '--nproc', '2',
                                    '--dist-url', _store(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ['error: --batch_size 31 does not divide over the 2 processes per node; give a multiple of 2']
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node', '2',
           os.path.join(ROOT, 'train_student.py')] + odd
    result = subprocess.run(cmd, cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert result.stderr.count('error: --batch_size 31 does not divide over the 2 processes') == 1, result.stderr
    assert not (tmp_path / 'save').exists()  # stopped before anything was written


@pytest.mark.parametrize('rank', [0, 1])
def test_torchrun_rank_0_alone_fails_on_an_error_every_rank_finds(rank, teacher_path, tmp_path, capsys,
                                                                   monkeypatch):
    """Were rank 1 to exit non-zero as well, torchrun could stop rank 0 before it prints the line."""
    from helper.train import main, run_student
    for name, value in {'RANK': rank, 'LOCAL_RANK': rank, 'WORLD_SIZE': 2, 'LOCAL_WORLD_SIZE': 2,
                        'MASTER_ADDR': '127.0.0.1', 'MASTER_PORT': 29500}.items():
        monkeypatch.setenv(name, str(value))
    odd = TINY + ['--batch_size', '31', '--path_t', str(teacher_path), '--model_s', 'resnet8',
                  '--save_dir', str(tmp_path / 'save')]
    status = main(run_student, odd)
    err = capsys.readouterr().err.strip().splitlines()
    if rank == 0:
        assert status == 2 and err == ['error: --batch_size 31 does not divide over the 2 processes per node; '
                                       'give a multiple of 2']
    else:
        assert status == 0 and err == []
    assert not (tmp_path / 'save').exists()


def _dying_worker(rank, url):
    distributed.init_process('cpu', rank, 2, rank, url, 'test', 60)
    if rank == 1:
        os._exit(3)
    time.sleep(0.5)
    torch.distributed.all_reduce(torch.ones(1))  # would wait for rank 1 until the timeout


def _mismatch_worker(rank, url):
    distributed.init_process('cpu', rank, 2, rank, url, 'test', 60)
    collectives.check_consistent({'--learning_rate': 0.05, '--seed': rank})


def test_a_dying_rank_stops_every_rank_with_one_line(tmp_path):
    start = time.time()
    with pytest.raises(DistributedFailure) as info:
        distributed.spawn(_dying_worker, 2, (_store(tmp_path),))
    assert 'rank 1 of 2 died (exit status 3)' in str(info.value) and '\n' not in str(info.value)
    assert time.time() - start < 45


def test_ranks_that_disagree_stop_with_one_line(tmp_path):
    with pytest.raises(ConfigError) as info:
        distributed.spawn(_mismatch_worker, 2, (_store(tmp_path),))
    message = str(info.value)
    assert message.startswith('ranks disagree on --seed: rank 0 has 0, rank 1 has 1') and '\n' not in message


class _ScriptedRank:
    """A spawned rank as spawn() sees it: it has reported a ConfigError and exits with status 2 at
    the parent's `exit_on_read`-th look at its exit code."""

    def __init__(self, exit_on_read):
        self.reads, self.exit_on_read, self.sentinel = 0, exit_on_read, None

    @property
    def exitcode(self):
        self.reads += 1
        return 2 if self.reads >= self.exit_on_read else None

    def start(self):
        pass

    def terminate(self):
        self.exit_on_read = 0

    join = kill = start


class _ReportQueue:
    def __init__(self, reports):
        self.reports = list(reports)

    def empty(self):
        return not self.reports

    def get(self):
        return self.reports.pop(0)


@pytest.mark.parametrize('exit_on_read', range(1, 9))
def test_a_rank_that_exits_between_two_looks_is_still_reported(monkeypatch, exit_on_read):
    # A rank can exit while the parent is between its failure check and its loop test; the error
    # it reported must still be raised, whichever look first sees it gone (under load this
    # surfaced as "rank 0 ended without a result").
    message = 'ranks disagree on --seed: rank 0 has 0, rank 1 has 1'

    class Context:
        def SimpleQueue(self):
            return _ReportQueue([('error', 0, message)])

        def Process(self, **kwargs):
            return _ScriptedRank(exit_on_read)

    monkeypatch.setattr(distributed.multiprocessing, 'get_context', lambda method: Context())
    monkeypatch.setattr(distributed.multiprocessing.connection, 'wait', lambda objects, timeout: [])
    with pytest.raises(ConfigError, match='^ranks disagree on --seed'):
        distributed.spawn(_mismatch_worker, 1)


def test_a_rank_that_never_arrives_times_out(tmp_path):
    url = _store(tmp_path)
    with pytest.raises(ConfigError, match='timed out after 2 s.*--dist_timeout'):
        distributed.init_process('cpu', 0, 2, 0, url, f'--dist-url {url}', timeout_s=2)
    assert not collectives.is_distributed()
