#!/usr/bin/env bash
# Fresh machine to a distilled student in a few minutes on 2 CPU cores, on the built-in
# 'synthetic' data set (no download): set up .venv, train a small teacher, then distil a student
# with the CKA-group loss beside CE and KD. Everything lands under ./save/quickstart.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh requirements.txt
PY=.venv/bin/python
SAVE=./save/quickstart
COMMON=(--dataset synthetic --epochs 4 --lr_decay_epochs 3 --batch_size 64 --num_workers 2
        --learning_rate 0.05 --print_freq 40 --save_dir "$SAVE" --trial quickstart)
TEACHER_DIR="$SAVE/teachers/resnet20_vanilla_synthetic_lr_0.05_decay_0.0005_trial_quickstart"
if [ ! -f "$TEACHER_DIR/resnet20_best.pth" ]; then
    $PY train_teacher.py --model resnet20 "${COMMON[@]}"
fi
# A new student run folder each time, so that reruns never touch an earlier result.
$PY train_student.py --path_t "$TEACHER_DIR/resnet20_best.pth" --model_s resnet8 \
    --distill ckagroup -c 1 -d 1 -b 5 --cka_groups 4 "${COMMON[@]}" --trial "quickstart-$(date +%Y%m%d-%H%M%S)"
echo "done: tensorboard --logdir $SAVE"
