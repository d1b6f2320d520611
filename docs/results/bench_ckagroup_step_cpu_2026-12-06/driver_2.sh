#!/usr/bin/env bash
# Classic path only, parent (360ce1a) against this version (addcmul in place), interleaved.
set -u
OUT=/work/main/local/bench
PIDS=$(pgrep -f "scripts/evidence.py run" || true)
[ -n "$PIDS" ] && kill -STOP $PIDS
trap '[ -n "$PIDS" ] && kill -CONT $PIDS' EXIT
export OMP_NUM_THREADS=2
B="scripts/bench_ckagroup_step.py --device cpu"
run() { local name=$1 dir=$2; shift 2
  (cd "$dir" && .venv/bin/python $B "$@" --json "$OUT/$name.json" > "$OUT/$name.log" 2>&1)
  echo "$name done $(date +%T) load $(cut -d' ' -f1-3 /proc/loadavg)"; }
for i in 3 4; do
  run parent_classic_$i /tmp/parent --parts step --paths classic --runs 1 --repeats 10 --warmup 2
  run new_classic_$i /work/main --parts step --paths classic --runs 1 --repeats 10 --warmup 2
done
run new_calls_memory_final /work/main --parts calls memory
echo all done
