#!/usr/bin/env bash
# Recorder benchmark (issue 4): a 30 Hz 640x480 rgb8 camera recorded by fp_recorder in its own
# process over the embedded runtime. Thin wrapper of `qail-ros bench recorder`; the last output
# line is the JSON result.
#   bench/recorder.sh                    # 600 s (the issue's 10 minutes)
#   DURATION=60 bench/recorder.sh        # shorter
#   RESULTS=out.jsonl bench/recorder.sh  # also append the JSON line to a file
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION="${DURATION:-600}"
PY="${PYTHON:-.venv/bin/python}"
[ -x "$PY" ] || PY=python3
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
echo "== qail-ros bench recorder --duration $DURATION --rate 30 --width 640 --height 480 --json" >&2
status=0
out="$(nice -n 10 "$PY" -c 'import sys; from qail_ros.cli import main; sys.exit(main())' \
  bench recorder --duration "$DURATION" --rate 30 --width 640 --height 480 --json)" || status=$?
echo "$out"
if [ -n "${RESULTS:-}" ]; then echo "$out" | tail -n 1 >> "$RESULTS"; fi
exit "$status"
