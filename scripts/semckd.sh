#!/usr/bin/env bash
# SemCKD: cross-layer attention over all student/teacher stage pairs (-s/--soft 1.0; sized by --batch_size).
# Published CIFAR-100 setting (SimKD repo scripts/run_distill.sh): -c 1 -d 1 -b 400.
# Usage: TEACHER=path/to/teacher_best.pth STUDENT=resnet8x4 bash scripts/semckd.sh [extra flags]
set -euo pipefail
TEACHER=${TEACHER:-./save/models/resnet32x4_vanilla/ckpt_epoch_240.pth}
STUDENT=${STUDENT:-resnet8x4}
cd "$(dirname "$0")/.."
${PYTHON:-python} train_student.py --path_t "$TEACHER" --distill semckd --model_s "$STUDENT" \
    -c 1 -d 1 -b 400 --trial 1 "$@"
