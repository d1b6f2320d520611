#!/usr/bin/env bash
# FitNet (hint): MSE between a ConvReg-regressed student map and the teacher map at --hint_layer (default 1).
# --hint_layer: the SemCKD/SimKD repos default to 1 (as here); RepDistiller (CRD paper numbers) used 2: add --hint_layer 2 for those.
# Published CIFAR-100 setting (SimKD repo scripts/run_distill.sh): -c 1 -d 1 -b 100.
# Usage: TEACHER=path/to/teacher_best.pth STUDENT=resnet8x4 bash scripts/fitnet.sh [extra flags]
set -euo pipefail
TEACHER=${TEACHER:-./save/models/resnet32x4_vanilla/ckpt_epoch_240.pth}
STUDENT=${STUDENT:-resnet8x4}
cd "$(dirname "$0")/.."
${PYTHON:-python} train_student.py --path_t "$TEACHER" --distill hint --model_s "$STUDENT" \
    -c 1 -d 1 -b 100 --trial 1 "$@"
