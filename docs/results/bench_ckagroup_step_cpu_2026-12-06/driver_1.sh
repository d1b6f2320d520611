#!/usr/bin/env bash
# Parent (360ce1a) against this commit, on the same machine in one session, interleaved.
set -u
OUT=/work/main/local/bench
PIDS=$(pgrep -f "scripts/evidence.py run" || true)
[ -n "$PIDS" ] && kill -STOP $PIDS
trap '[ -n "$PIDS" ] && kill -CONT $PIDS' EXIT
export OMP_NUM_THREADS=2
B="scripts/bench_ckagroup_step.py --device cpu"
run() { # name dir args...
  local name=$1 dir=$2; shift 2
  (cd "$dir" && .venv/bin/python $B "$@" --json "$OUT/$name.json" > "$OUT/$name.log" 2>&1)
  echo "$name done $(date +%T) load $(cut -d' ' -f1-3 /proc/loadavg)"
}
run parent_calls_memory /tmp/parent --parts calls memory
run new_calls_memory /work/main --parts calls memory
run parent_step_1 /tmp/parent --parts step --runs 1 --repeats 8 --warmup 2
run new_step_1 /work/main --parts step --runs 1 --repeats 8 --warmup 2
run parent_step_2 /tmp/parent --parts step --runs 1 --repeats 8 --warmup 2
run new_step_2 /work/main --parts step --runs 1 --repeats 8 --warmup 2
echo all done
