#!/usr/bin/env bash
# SRRL: feature connector + teacher classifier on the projected student feature.
# Published CIFAR-100 setting (SimKD repo scripts/run_distill.sh): -c 1 -d 1 -b 1.
# Usage: TEACHER=path/to/teacher_best.pth STUDENT=resnet8x4 bash scripts/srrl.sh [extra flags]
set -euo pipefail
TEACHER=${TEACHER:-./save/models/resnet32x4_vanilla/ckpt_epoch_240.pth}
STUDENT=${STUDENT:-resnet8x4}
cd "$(dirname "$0")/.."
${PYTHON:-python} train_student.py --path_t "$TEACHER" --distill srrl --model_s "$STUDENT" \
    -c 1 -d 1 -b 1 --trial 1 "$@"
