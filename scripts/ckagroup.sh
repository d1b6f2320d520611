#!/usr/bin/env bash
# CKA-group distillation: CE + KD + beta * mean_i(1 - CKA_Gi) over n paired contiguous layer groups.
# Defaults: 4 groups, block-level taps, debiased linear CKA, even student split (see README).
# Usage: TEACHER=path/to/teacher_best.pth STUDENT=resnet8x4 bash scripts/ckagroup.sh [extra flags]
set -euo pipefail
TEACHER=${TEACHER:-./save/models/resnet32x4_vanilla/ckpt_epoch_240.pth}
STUDENT=${STUDENT:-resnet8x4}
cd "$(dirname "$0")/.."
${PYTHON:-python} train_student.py --path_t "$TEACHER" --distill ckagroup --model_s "$STUDENT" \
    -c 1 -d 1 -b 5 --cka_groups 4 --trial 1 "$@"
