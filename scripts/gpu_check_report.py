"""Collect the figures of scripts/gpu_check.sh into OUT/gpu_check.json and OUT/gpu_check.md.

    python scripts/gpu_check_report.py OUT

Reads OUT/stages.tsv (stage, exit status, seconds) and the JSON files the stages wrote; a stage
that wrote nothing is left out of the tables (its exit status says why).
"""
import json
import os
import sys

import torch

out = sys.argv[1]
def load(name):
    path = os.path.join(out, name)
    return json.load(open(path)) if os.path.exists(path) else None

stages = [dict(zip(('stage', 'exit', 'seconds'), line.rstrip('\n').split('\t')))
          for line in open(os.path.join(out, 'stages.tsv'))]
gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no CUDA GPU'
report = {'gpu': gpu, 'torch': torch.__version__, 'stages': stages,
          'step_memory': load('step_memory.json'), 'step_compile': load('step_compile.json'),
          'fast_epoch': load('fast_epoch.json'), 'end_to_end': {
              'summary': load('summary.json'), 'metrics': load('metrics.json'),
              'teacher_groups': (load('cka_groups.json') or {}).get('groups')}}
with open(os.path.join(out, 'gpu_check.json'), 'w') as f:
    json.dump(report, f, indent=1)

md = [f'# GPU check: {report["gpu"]}, torch {report["torch"]}', '',
      '| stage | exit | seconds |', '|---|---|---|']
md += [f'| {s["stage"]} | {s["exit"]} | {s["seconds"]} |' for s in stages]
for key in ('step_memory', 'step_compile'):
    r = report[key]
    if not r:
        continue
    md += ['', f'## {key}: {r["teacher"]} -> {r["student"]}, batch {r["batch_size"]} ({r["machine"]})', '',
           '| path | run | kd median ms | ckagroup median ms | ratio | Gram products ms | floor ratio |',
           '|---|---|---|---|---|---|---|']
    for path, runs in (r.get('step') or {}).items():
        md += [f'| {path} | {i + 1} | {x["kd"]["median_ms"]:.2f} | {x["ckagroup"]["median_ms"]:.2f} | '
               f'{x["ratio"]:.3f} | {x["floor"]["products_ms"]:.2f} | {x["floor"]["floor_ratio"]:.3f} |'
               for i, x in enumerate(runs)]
    if r.get('memory'):
        md += ['', '| path | kd peak tensor MB | ckagroup peak tensor MB | ratio | kd max_memory_allocated MB | '
               'ckagroup max_memory_allocated MB | ratio |', '|---|---|---|---|---|---|---|']
        for p, m in r['memory'].items():
            cells = [p]
            for key in ('peak_tensor', 'max_memory_allocated'):
                bytes_key = key + '_bytes' if key == 'peak_tensor' else key
                present = bytes_key in m['kd']
                cells += [f'{m[method][bytes_key] / 2 ** 20:.0f}' if present else '' for method in ('kd', 'ckagroup')]
                cells.append(f'{m[key + "_ratio"]:.3f}' if present else '')
            md.append('| ' + ' | '.join(cells) + ' |')
    if r.get('depth'):
        md += ['', '| teacher | block layers | kd ms | ckagroup ms | ratio | floor ratio |',
               '|---|---|---|---|---|---|']
        md += [f'| {d["teacher"]} | {d["layers"]} | {d["kd_ms"]:.2f} | {d["ckagroup_ms"]:.2f} | {d["ratio"]:.3f} | '
               f'{d["floor"]["floor_ratio"]:.3f} |' for d in r['depth']['rows']]
        md.append(f'\nGrowth: {r["depth"]["fit"]["extra_ms_per_layer"]:.3f} ms per teacher block layer.')
    if r.get('reduced'):
        x = r['reduced']
        md.append(f'\nbf16 Gram products (bf16 output): {x["bf16_products_ms"]:.2f} ms against float32 '
                  f'{x["float32_products_ms"]:.2f} ms; largest CKA error against float64 {x["bf16_max_error"]:.1e} '
                  f'(float32: {x["float32_max_error"]:.1e}).')
    if r.get('calls'):
        md += ['', '| path | kd aten calls | ckagroup aten calls | kd host reads | ckagroup host reads | graph breaks of the term |',
               '|---|---|---|---|---|---|']
        md += [f'| {p} | {c["kd"]["aten_calls"]} | {c["ckagroup"]["aten_calls"]} | {c["kd"]["host_reads"]} | '
               f'{c["ckagroup"]["host_reads"]} | {c["ckagroup"].get("graph_breaks")} |' for p, c in r['calls'].items()]
    if r.get('precompute'):
        md.append(f'\nTeacher-group precompute (resnet32x4, 10 batches of 64): {r["precompute"]["seconds"]:.2f} s.')
fe = report['fast_epoch']
if fe:
    md += ['', f'## Fast-epoch benchmark, {fe["dataset"]} ({fe["machine"]}; fast = {" ".join(fe["fast_args"])})', '',
           '| method | path | images/s | epoch s | top-1 |', '|---|---|---|---|---|']
    md += [f'| {x["method"]} | {x["path"]} | {x["images_per_s"]:.0f} | {x["epoch_s"]:.1f} | {x["top1"]:.2f} |'
           for x in fe['runs']]
    md.append('\nfast / classic: ' + ', '.join(f'{m} {v:.2f}x' for m, v in fe['fast_over_classic'].items()))
e2e = report['end_to_end']['summary']
if e2e:
    md += ['', f'## End-to-end ckagroup run (synthetic, resnet20 -> resnet8, 2 epochs, fast options)', '',
           f'last-epoch test top-1 {e2e.get("last_top1")}, teacher groups {report["end_to_end"]["teacher_groups"]}']
with open(os.path.join(out, 'gpu_check.md'), 'w') as f:
    f.write('\n'.join(md) + '\n')
print(f'gpu_check: figures in {out}/gpu_check.json and {out}/gpu_check.md')
