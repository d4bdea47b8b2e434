#!/usr/bin/env bash
# The same benchmarks on two checkouts, back to back on one machine (issue 14 "no figure
# regresses"): `bench decode --small`, `bench physics --quick` and `bench cilrs`, each run on
# BEFORE then AFTER, ROUNDS times, alternating, so drift of the machine hits both alike.
# Each checkout runs with its own .venv (`make setup` there first).
#   bench/before_after.sh BEFORE_DIR AFTER_DIR [OUT_DIR]      # default OUT_DIR bench-results/before_after
#   ROUNDS=2 CILRS_RUNS=30 bench/before_after.sh ...
# Then: python bench/before_after.py OUT_DIR   (a table of both, and the after/before ratios)
set -euo pipefail
[ $# -ge 2 ] || { sed -n 2,8p "$0"; exit 2; }
BEFORE=$(cd "$1" && pwd); AFTER=$(cd "$2" && pwd); OUT=${3:-bench-results/before_after}
mkdir -p "$OUT"
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
for side in BEFORE AFTER; do
  dir=${!side}
  [ -x "$dir/.venv/bin/qail-ros" ] || { echo "$dir has no .venv: run make setup there" >&2; exit 2; }
  echo "$side $dir $(git -C "$dir" rev-parse HEAD)$(git -C "$dir" diff --quiet HEAD || echo ' +uncommitted-changes')" | tee -a "$OUT/checkouts.txt"
done
run() {  # run SIDE NAME ROUND ARGS...
  local side=$1 name=$2 round=$3; shift 3
  local dir=${!side}
  echo "== $side $name (round $round)" >&2
  (cd "$dir" && .venv/bin/qail-ros bench "$@" --json) > "$OUT/$name.$side.$round.log" 2>&1
  tail -n 1 "$OUT/$name.$side.$round.log" > "$OUT/$name.$side.$round.json"
}
for round in $(seq 1 "${ROUNDS:-1}"); do
  for side in BEFORE AFTER; do run "$side" decode "$round" decode --small; done
  for side in BEFORE AFTER; do
    run "$side" physics "$round" physics --quick --no-progress --out "$OUT/physics-$side-$round"
  done
  for side in BEFORE AFTER; do
    run "$side" cilrs "$round" cilrs --runs "${CILRS_RUNS:-50}" --cache-dir "$OUT/cilrs-cache-$side"
  done
done
echo "done: python bench/before_after.py $OUT" >&2
