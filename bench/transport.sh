#!/usr/bin/env bash
# Transport benchmark of the embedded runtime (issue 2): 640x480 rgb8 images at 30 Hz,
# two processes over Zenoh, then one process (composed). Thin wrapper of
# `qail-ros bench transport`; each run's last output line is its JSON result.
#   bench/transport.sh                 # 60 s per mode
#   DURATION=10 bench/transport.sh     # shorter
#   RESULTS=out.jsonl bench/transport.sh   # also append the JSON lines to a file
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION="${DURATION:-60}"
PY="${PYTHON:-.venv/bin/python}"
[ -x "$PY" ] || PY=python3
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
for mode in processes composed; do
  echo "== qail-ros bench transport --mode $mode --duration $DURATION --json" >&2
  out="$(nice -n 10 "$PY" -c 'import sys; from qail_ros.cli import main; sys.exit(main())' \
    bench transport --mode "$mode" --duration "$DURATION" --rate 30 --width 640 --height 480 \
    --json)" || status=$?
  echo "$out"
  if [ -n "${RESULTS:-}" ]; then echo "$out" | tail -n 1 >> "$RESULTS"; fi
done
exit "${status:-0}"
