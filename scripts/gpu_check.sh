#!/usr/bin/env bash
# Every figure that needs a GPU, in one command (at most 5 minutes: the stage limits add up to
# 300 s, so that a rerun fits in a 15-minute loan; aimed at one H100/H200):
#
#     bash scripts/gpu_check.sh [OUT_DIR]        # default OUT_DIR: gpu_check_results
#
# Needs only the repo and its requirements (python: $PYTHON, else .venv/bin/python, else python3).
# Runs, each under its own time limit, on the first visible CUDA GPU:
#   1. the CUDA-only tests (tests/test_fast_training.py, tests/test_classic_distillers.py -k cuda);
#   2. the step-time, memory and call-count benchmark, kd vs ckagroup, classic and fast path, the
#      CKA term compiled (scripts/bench_ckagroup_step.py --term_compile on), then the fast path
#      again with --compile reduce-overhead;
#   3. the fast-epoch benchmark on the synthetic set (scripts/bench_fast_epoch.py);
#   4. a short end-to-end ckagroup run (teacher, then student, synthetic set, fast options).
# Writes OUT_DIR/gpu_check.json (every figure, each stage's exit status and time) and
# OUT_DIR/gpu_check.md (the same as tables), beside each stage's log. A stage that fails or
# times out is recorded as such and the others still run; the exit status is 1 if any failed.
# Without a CUDA GPU it says so in one line and exits 0 (nothing is written).
set -uo pipefail
cd "$(dirname "$0")/.."
source scripts/gpu_stages.sh
require_gpu gpu_check

OUT=${1:-gpu_check_results}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
STAGES="$OUT/stages.tsv"
: > "$STAGES"

stage cuda_tests 50 "$PY" -m pytest -q -p no:cacheprovider tests/test_fast_training.py \
    tests/test_classic_distillers.py -k "cuda" -rs
stage step_memory 120 "$PY" scripts/bench_ckagroup_step.py --device cuda --repeats 20 --warmup 5 \
    --runs 2 --parts step memory calls --term_compile on --json "$OUT/step_memory.json"
stage step_compile 80 "$PY" scripts/bench_ckagroup_step.py --device cuda --repeats 20 --warmup 5 \
    --runs 2 --parts step --compile reduce-overhead --term_compile on --json "$OUT/step_compile.json"
stage fast_epoch 30 "$PY" scripts/bench_fast_epoch.py --dataset synthetic --device cuda --epochs 2 \
    --train_per_class 100 --num_workers 4 --json "$OUT/fast_epoch.json"
E2E=(--dataset synthetic --device cuda --batch_size 64 --num_workers 4 --save_dir "$WORK/save"
     --data_on_device --amp --channels_last --print_freq 1000)
stage end_to_end 20 bash -c '
    set -e
    PY=$1; shift
    "$PY" train_teacher.py --model resnet20 --epochs 2 "$@"
    T=$(ls "$0"/save/teachers/*/resnet20_best.pth)
    "$PY" train_student.py --path_t "$T" --model_s resnet8 --distill ckagroup -b 5 --epochs 2 \
        --cka_groups 4 "$@"
    cp "$0"/save/students/*/summary.json "$0"/save/students/*/cka_groups.json "$0"/save/students/*/metrics.json \
        '"$OUT"'/
' "$WORK" "$PY" "${E2E[@]}"

"$PY" scripts/gpu_check_report.py "$OUT"
stages_verdict gpu_check
