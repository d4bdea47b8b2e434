#!/usr/bin/env bash
# Physics benchmark (issue 3): the QAIL paper's Table 7 on DeepMind Control, measured here.
# Thin wrapper of `qail-ros bench physics`: one run per task (so each task's command and commit
# are recorded), merged into docs/results/physics.{json,md,csv,png}. One thread, nice 10.
#   bench/physics.sh                                  # every task with a shipped FP policy
#   TASKS="cartpole-balance" bench/physics.sh         # some tasks
#   BITS=w4a4 SEEDS=3 EPISODES=10 STEPS=2000 bench/physics.sh
#   STRETCH_BITS= bench/physics.sh                   # no W3A3 stretch rows (default w3a3, 1 seed)
#   OUT=bench-results/physics bench/physics.sh        # somewhere else than docs/results
#   QUICK=1 bench/physics.sh                          # the CI smoke test (~1 min)
#   TEACHERS="runs/teachers/cartpole-swingup" bench/physics.sh   # your own teacher dirs
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-.venv/bin/python}"
[ -x "$PY" ] || PY=python3
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
qail() { nice -n 10 "$PY" -c 'import sys; from qail_ros.cli import main; sys.exit(main())' "$@"; }
if [ -n "${QUICK:-}" ]; then
  qail bench physics --quick --out "${OUT:-bench-results/physics-quick}" --no-progress --json
  exit $?
fi
OUT="${OUT:-docs/results}"
if [ -n "${TEACHERS:-}" ]; then TASKS="${TASKS:-}"; fi
TASKS="${TASKS-$("$PY" -c 'from qail_ros.physics.models import shipped_tasks; print(*shipped_tasks())')}"
for task in $TASKS; do
  echo "== qail-ros bench physics --task $task (${BITS:-w4a4})" >&2
  qail bench physics --task "$task" --bits "${BITS:-w4a4}" --seeds "${SEEDS:-3}" \
    --episodes "${EPISODES:-10}" --steps "${STEPS:-2000}" \
    --methods "${METHODS:-fp,ptq_rtn,qail,qail_qbc,qail_qbc_offline,qail_wqbc}" \
    --out "$OUT" --merge --no-progress --json
  if [ -n "${STRETCH_BITS-w3a3}" ]; then
    echo "== qail-ros bench physics --task $task (stretch ${STRETCH_BITS-w3a3})" >&2
    qail bench physics --task "$task" --bits "${STRETCH_BITS-w3a3}" \
      --seeds "${STRETCH_SEEDS:-1}" --episodes "${EPISODES:-10}" --steps "${STEPS:-2000}" \
      --methods "${STRETCH_METHODS:-fp,ptq_rtn,qail,qail_qbc,qail_qbc_offline}" \
      --out "$OUT" --merge --no-progress --json
  fi
done
for teacher in ${TEACHERS:-}; do
  echo "== qail-ros bench physics --teacher $teacher (${BITS:-w4a4})" >&2
  qail bench physics --teacher "$teacher" --bits "${BITS:-w4a4}" --seeds "${SEEDS:-3}" \
    --episodes "${EPISODES:-10}" --steps "${STEPS:-2000}" \
    --methods "${METHODS:-fp,ptq_rtn,qail,qail_qbc}" --out "$OUT" --merge --no-progress --json
done
