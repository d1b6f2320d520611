#!/usr/bin/env bash
# The evidence that wants a GPU, in one command of at most 10 minutes (a 15-minute loan leaves room
# for a rerun):
#
#     bash scripts/gpu_evidence.sh OUT_DIR
#
#   cost: every row of resnet56_resnet8_family, then of resnet32_mobilenetv2_family, timed against
#   kd on the GPU (`scripts/evidence.py cost --device cuda`) -> OUT_DIR/cuda/<study>/cost.json (kept
#   apart from the checkout's cost.json, the CPU pass each summary shows). The steps run on the
#   built-in synthetic set (experiments/step_cost.py), so no data is needed.
# Each stage's log and exit status go to OUT_DIR; the exit status is 1 if a stage failed.
# Without a CUDA GPU it says so in one line and exits 0 (nothing is written).
set -uo pipefail
cd "$(dirname "$0")/.."
source scripts/gpu_stages.sh
require_gpu gpu_evidence
if [ $# -lt 1 ]; then
    echo "gpu_evidence: give the output folder: bash scripts/gpu_evidence.sh OUT_DIR" >&2
    exit 2
fi
OUT=$1
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
STAGES="$OUT/stages.tsv"
: > "$STAGES"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader > "$OUT/machine.txt" 2>&1
"$PY" -c 'import torch, torchvision; print("torch", torch.__version__, "torchvision", torchvision.__version__,
"cpu capability", torch.backends.cpu.get_cpu_capability())' >> "$OUT/machine.txt" 2>&1

for study in resnet56_resnet8_family resnet32_mobilenetv2_family; do
    stage "cost_$study" 240 "$PY" scripts/evidence.py cost "$study" --device cuda --results "$OUT/cuda"
done

stages_verdict gpu_evidence
