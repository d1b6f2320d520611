#!/usr/bin/env bash
# The evidence that wants a GPU, in one command of at most 10 minutes (a 15-minute loan leaves room
# for a rerun that resumes):
#
#     bash scripts/gpu_evidence.sh OUT_DIR [CIFAR10_PACKS]    # default packs: local/cifar10_jpg
#
# CIFAR10_PACKS holds the project's CIFAR-10 JPEG packs (train_jpg.npz, test_jpg.npz; copy them
# from ../shared/data/cifar10 into the git-ignored local/cifar10_jpg and carry that folder).
#   1. cost: every row of resnet56_resnet8_family timed against kd on the GPU
#      (`scripts/evidence.py cost --device cuda`) -> OUT_DIR/cuda/resnet56_resnet8_family/cost.json
#      (kept apart from the checkout's cost.json, the CPU pass the summary shows);
#   2. teacher: resnet56_resnet8_teacher_seed1's teacher (`run --teacher_only`, float32 as its study
#      declares) -> OUT_DIR/docs/results/resnet56_resnet8_teacher_seed1/teacher.json and its
#      checkpoint under OUT_DIR/save/evidence/teachers/, the paths they take in the checkout.
#      Cut off by its limit, its run folder goes to OUT_DIR/save/ instead; on the same warm machine
#      the same command resumes it.
# Each stage's log and exit status go to OUT_DIR; the exit status is 1 if a stage failed.
# Without a CUDA GPU it says so in one line and exits 0 (nothing is written).
set -uo pipefail
cd "$(dirname "$0")/.."
source scripts/gpu_stages.sh
require_gpu gpu_evidence
if [ $# -lt 1 ]; then
    echo "gpu_evidence: give the output folder: bash scripts/gpu_evidence.sh OUT_DIR [CIFAR10_PACKS]" >&2
    exit 2
fi
OUT=$1
PACKS=${2:-local/cifar10_jpg}
if [ ! -f "$PACKS/train_jpg.npz" ] || [ ! -f "$PACKS/test_jpg.npz" ]; then
    echo "gpu_evidence: no CIFAR-10 packs in $PACKS; copy ../shared/data/cifar10/*.npz there and carry it" >&2
    exit 2
fi
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
STAGES="$OUT/stages.tsv"
: > "$STAGES"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader > "$OUT/machine.txt" 2>&1
"$PY" -c 'import torch, torchvision; print("torch", torch.__version__, "torchvision", torchvision.__version__,
"cpu capability", torch.backends.cpu.get_cpu_capability())' >> "$OUT/machine.txt" 2>&1

stage data 60 "$PY" scripts/prepare_cifar10_jpeg.py "$PACKS" ./data
stage cost 200 "$PY" scripts/evidence.py cost resnet56_resnet8_family --device cuda --results "$OUT/cuda"

STUDY=resnet56_resnet8_teacher_seed1
TEACHER_DIR=$("$PY" -c 'import sys
from experiments.runner import StudyRunner
from experiments.study import load_study
print(StudyRunner(load_study(sys.argv[1]), "docs/results", "save/evidence", "./data").teacher_save_dir())' "$STUDY")
if stage teacher 300 "$PY" scripts/evidence.py run "$STUDY" --teacher_only --data_folder ./data \
        --results docs/results --work save/evidence --num_workers 4; then
    cp --parents "docs/results/$STUDY/teacher.json" "$TEACHER_DIR"/teachers/*/ckpt_last.pth "$OUT"/
else
    cp -r --parents "$TEACHER_DIR" "$OUT"/ 2>/dev/null
fi

stages_verdict gpu_evidence
