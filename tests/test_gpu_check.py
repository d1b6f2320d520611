"""scripts/gpu_check.sh and scripts/gpu_evidence.sh: their no-GPU branch, their timed stages
(scripts/gpu_stages.sh), and gpu_check's report built from what the benchmarks write."""
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize('script', ['gpu_check.sh', 'gpu_evidence.sh'])
def test_without_gpu_one_line_and_exit_0(script, tmp_path):
    env = dict(os.environ, CUDA_VISIBLE_DEVICES='', PYTHON=sys.executable)
    out = tmp_path / 'results'
    done = subprocess.run(['bash', os.path.join(ROOT, 'scripts', script), str(out)],
                          capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    assert len(lines) == 1 and 'no CUDA GPU' in lines[0]
    assert not out.exists()   # nothing written


def test_stages_record_exit_status_and_time_limits_and_fail_the_command(tmp_path):
    script = f"""cd {ROOT}; source scripts/gpu_stages.sh
OUT={tmp_path}; STAGES={tmp_path}/stages.tsv; : > "$STAGES"
stage fine 5 echo hello; stage broken 5 false; stage slow 1 sleep 10
stages_verdict try"""
    done = subprocess.run(['bash', '-c', script], capture_output=True, text=True, timeout=60)
    rows = [line.split('\t') for line in (tmp_path / 'stages.tsv').read_text().splitlines()]
    assert [(name, rc) for name, rc, _ in rows] == [('fine', '0'), ('broken', '1'), ('slow', '124')]
    assert int(rows[2][2]) < 5   # cut off at its 1 s limit, not after the 10 s it asked for
    assert (tmp_path / 'fine.log').read_text() == 'hello\n'
    assert done.returncode == 1 and done.stdout.splitlines()[-1].startswith('try: some stages failed')


def test_report_tables_hold_the_benchmark_figures(tmp_path):
    """The step benchmark's JSON (a tiny CPU run) goes into gpu_check.json and gpu_check.md as is."""
    bench = [sys.executable, os.path.join(ROOT, 'scripts', 'bench_ckagroup_step.py'), '--device', 'cpu',
             '--teacher', 'resnet8', '--student', 'resnet8', '--batch_size', '8', '--repeats', '2',
             '--warmup', '1', '--runs', '1', '--parts', 'step', 'reduced', 'calls', '--json', str(tmp_path / 'step_memory.json')]
    subprocess.run(bench, check=True, capture_output=True, timeout=300)
    (tmp_path / 'stages.tsv').write_text('cuda_tests\t0\t12\nstep_memory\t0\t30\nfast_epoch\t124\t110\n')
    subprocess.run([sys.executable, os.path.join(ROOT, 'scripts', 'gpu_check_report.py'), str(tmp_path)],
                   check=True, capture_output=True, timeout=120)
    bench_figures = json.loads((tmp_path / 'step_memory.json').read_text())
    report = json.loads((tmp_path / 'gpu_check.json').read_text())
    assert report['step_memory'] == bench_figures and report['fast_epoch'] is None
    assert [s['exit'] for s in report['stages']] == ['0', '0', '124']
    md = (tmp_path / 'gpu_check.md').read_text()
    assert '| fast_epoch | 124 | 110 |' in md
    for path in ('classic', 'fast'):
        run = bench_figures['step'][path][0]
        assert run['ratio'] == pytest.approx(run['ckagroup']['median_ms'] / run['kd']['median_ms'])
        assert f'| {path} | 1 | {run["kd"]["median_ms"]:.2f} | {run["ckagroup"]["median_ms"]:.2f} | ' \
               f'{run["ratio"]:.3f} | {run["floor"]["products_ms"]:.2f} | {run["floor"]["floor_ratio"]:.3f} |' in md
        calls = bench_figures['calls'][path]
        assert f'| {path} | {calls["kd"]["aten_calls"]} | {calls["ckagroup"]["aten_calls"]} | ' \
               f'{calls["kd"]["host_reads"]} | {calls["ckagroup"]["host_reads"]} |' in md
        floor = run['floor']   # (kd + products) / kd, from the two measured times
        assert floor['floor_ratio'] == pytest.approx((run['kd']['median_ms'] + floor['products_ms'])
                                                     / run['kd']['median_ms'])
    assert bench_figures['machine'] in md   # the machine beside the figures
    reduced = bench_figures['reduced']
    assert reduced['float32_max_error'] < 1e-5 < reduced['bf16_max_error']   # the digits bf16 output loses
    assert f'largest CKA error against float64 {reduced["bf16_max_error"]:.1e}' in md


def test_call_counter_counts_each_host_read_where_it_is_asked():
    """bench_ckagroup_step's `calls` part: host reads counted by source line, against a step
    whose reads are known by hand (two lines of this file, three reads), and nothing left patched."""
    import importlib.util
    spec = importlib.util.spec_from_file_location('bench', os.path.join(ROOT, 'scripts', 'bench_ckagroup_step.py'))
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    import torch
    x = torch.arange(4.0)

    def step():
        values = x.add(1).tolist()
        return values, bool(x.sum() > 0), float(x.max())

    first = step.__code__.co_firstlineno
    before = {name: getattr(torch.Tensor, name) for name in bench.HOST_READS}
    counted = bench.count_calls(step)
    here = os.path.basename(__file__)
    assert counted['host_reads'] == 3
    assert counted['host_reads_at'] == {f'{here}:{first + 1}': 1, f'{here}:{first + 2}': 2}
    assert counted['aten_calls'] >= 4   # add, sum, gt, max at least
    assert all(getattr(torch.Tensor, name) is method for name, method in before.items())

