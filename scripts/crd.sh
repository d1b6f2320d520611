#!/usr/bin/env bash
# CRD: contrastive representation distillation (--feat_dim 128 --nce_k 16384 --nce_t 0.07 --nce_m 0.5 --mode exact).
# Published CIFAR-100 setting (SimKD repo scripts/run_distill.sh): -c 1 -d 1 -b 0.8.
# Usage: TEACHER=path/to/teacher_best.pth STUDENT=resnet8x4 bash scripts/crd.sh [extra flags]
set -euo pipefail
TEACHER=${TEACHER:-./save/models/resnet32x4_vanilla/ckpt_epoch_240.pth}
STUDENT=${STUDENT:-resnet8x4}
cd "$(dirname "$0")/.."
${PYTHON:-python} train_student.py --path_t "$TEACHER" --distill crd --model_s "$STUDENT" \
    -c 1 -d 1 -b 0.8 --trial 1 "$@"
