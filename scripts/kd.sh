#!/usr/bin/env bash
# Vanilla KD (Hinton et al.): CE + KL at temperature --kd_T (default 4). Published setting: -c 1 -d 1 -b 0.
# Usage: TEACHER=path/to/teacher_best.pth STUDENT=resnet8x4 bash scripts/kd.sh [extra flags]
set -euo pipefail
TEACHER=${TEACHER:-./save/models/resnet32x4_vanilla/ckpt_epoch_240.pth}
STUDENT=${STUDENT:-resnet8x4}
cd "$(dirname "$0")/.."
${PYTHON:-python} train_student.py --path_t "$TEACHER" --distill kd --model_s "$STUDENT" \
    -c 1 -d 1 -b 0 --trial 1 "$@"
