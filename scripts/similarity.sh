#!/usr/bin/env bash
# SP: similarity-preserving loss on the last stage map.
# Published CIFAR-100 setting (SimKD repo scripts/run_distill.sh): -c 1 -d 1 -b 3000.
# Usage: TEACHER=path/to/teacher_best.pth STUDENT=resnet8x4 bash scripts/similarity.sh [extra flags]
set -euo pipefail
TEACHER=${TEACHER:-./save/models/resnet32x4_vanilla/ckpt_epoch_240.pth}
STUDENT=${STUDENT:-resnet8x4}
cd "$(dirname "$0")/.."
${PYTHON:-python} train_student.py --path_t "$TEACHER" --distill similarity --model_s "$STUDENT" \
    -c 1 -d 1 -b 3000 --trial 1 "$@"
