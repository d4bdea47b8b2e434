#!/usr/bin/env bash
# CILRS latency benchmark (issue 5): every engine at batch 1, median and p90 in one run.
# Thin wrapper of `qail-ros bench cilrs`; one thread per engine, nice 10.
#   bench/cilrs.sh                                   # ResNet-34, 900x256, 50 runs
#   RESNET=18 HEIGHT=128 WIDTH=448 RUNS=20 bench/cilrs.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-.venv/bin/python}"
[ -x "$PY" ] || PY=python3
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
echo "commit $(git rev-parse HEAD 2>/dev/null || echo none)" >&2
exec nice -n 10 "$PY" -c 'import sys; from qail_ros.cli import main; sys.exit(main())' \
  bench cilrs --resnet "${RESNET:-34}" --height "${HEIGHT:-256}" --width "${WIDTH:-900}" \
  --runs "${RUNS:-50}" --threads "${THREADS:-1}" --json "$@"
