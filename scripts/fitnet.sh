#!/usr/bin/env bash
# FitNet (hint): MSE between a ConvReg-regressed student map and the teacher map at --hint_layer (default 2).
# --hint_layer: RepDistiller (CRD paper numbers) defaults to 2, the SemCKD/SimKD repos to 1; add --hint_layer 1 to match those.
# Published CIFAR-100 setting (SimKD repo scripts/run_distill.sh): -c 1 -d 1 -b 100.
# Usage: TEACHER=path/to/teacher_best.pth STUDENT=resnet8x4 bash scripts/fitnet.sh [extra flags]
set -euo pipefail
TEACHER=${TEACHER:-./save/models/resnet32x4_vanilla/ckpt_epoch_240.pth}
STUDENT=${STUDENT:-resnet8x4}
cd "$(dirname "$0")/.."
${PYTHON:-python} train_student.py --path_t "$TEACHER" --distill hint --model_s "$STUDENT" \
    -c 1 -d 1 -b 100 --trial 1 "$@"
