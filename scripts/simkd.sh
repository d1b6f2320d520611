#!/usr/bin/env bash
# SimKD: projector (-f/--factor 2) + reused teacher classifier; CE and KD off.
# Published CIFAR-100 setting (SimKD repo scripts/run_distill.sh): -c 0 -d 0 -b 1.
# Usage: TEACHER=path/to/teacher_best.pth STUDENT=resnet8x4 bash scripts/simkd.sh [extra flags]
set -euo pipefail
TEACHER=${TEACHER:-./save/models/resnet32x4_vanilla/ckpt_epoch_240.pth}
STUDENT=${STUDENT:-resnet8x4}
cd "$(dirname "$0")/.."
${PYTHON:-python} train_student.py --path_t "$TEACHER" --distill simkd --model_s "$STUDENT" \
    -c 0 -d 0 -b 1 --trial 1 "$@"
