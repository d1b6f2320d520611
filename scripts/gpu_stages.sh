# Sourced by scripts/gpu_check.sh and scripts/gpu_evidence.sh (from the repository root): the
# python to use, the no-GPU exit, and stages that each run under a time limit with their log.

# PY: $PYTHON, else .venv/bin/python, else python3
if [ -n "${PYTHON:-}" ]; then PY=$PYTHON
elif [ -x .venv/bin/python ]; then PY=.venv/bin/python
else PY=python3; fi

# require_gpu NAME: without a CUDA GPU, say so in one line and exit 0 (nothing is written)
require_gpu() {
    if ! "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
        echo "$1: no CUDA GPU visible to $PY (torch.cuda.is_available() is False); nothing to run"
        exit 0
    fi
}

# stage NAME LIMIT_S CMD...: run with a time limit, log to $OUT/NAME.log, record status and seconds
# in $STAGES; returns the command's exit status
stage() {
    local name=$1 limit=$2; shift 2
    local start=$SECONDS
    echo "== $name (limit ${limit} s)"
    timeout --kill-after=10 "$limit" "$@" > "$OUT/$name.log" 2>&1
    local rc=$?
    printf '%s\t%s\t%s\n' "$name" "$rc" "$((SECONDS - start))" >> "$STAGES"
    tail -n 5 "$OUT/$name.log"
    echo "   -> exit $rc in $((SECONDS - start)) s"
    return $rc
}

# stages_verdict NAME: exit 1, naming $STAGES, if a stage failed
stages_verdict() {
    if awk -F'\t' '$2 != 0 { bad = 1 } END { exit bad ? 0 : 1 }' "$STAGES"; then
        echo "$1: some stages failed (see $STAGES and the logs beside it)"
        exit 1
    fi
}
