#!/usr/bin/env bash
# The GPU tier in one command (under 10 minutes on one GPU): CUDA bf16 training steps of the
# MLP, CILRS and VLA students, the INT4 decoder on onnxruntime-gpu, the TensorRT CILRS and
# vision plans (`pytest -m gpu`, test/training/test_gpu.py). Prints the pytest log, then ONE
# JSON line: {"cuda": ..., "device": ..., "passed": N, "failed": N, "skipped": N,
# "ok": true|false, "seconds": S, "tests": {name: {"outcome", "seconds", "reason"}}}.
# Exit status 0 when nothing failed (skips, e.g. tensorrt not installed, are reported).
#   scripts/gpu_check.sh [PYTHON]      (default: .venv/bin/python, else python3)
set -u
cd "$(dirname "$0")/.."
PY=${1:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT
timeout 570 "$PY" -m pytest -q -m gpu -rs -p no:cacheprovider test/training/test_gpu.py \
    --junitxml "$OUT/gpu.xml" -s 2>&1 | tail -n 60
"$PY" - "$OUT/gpu.xml" <<'PYEOF'
import json, sys, xml.etree.ElementTree as ET
try:
    import torch
    cuda = torch.cuda.is_available()
    device = torch.cuda.get_device_name(0) if cuda else None
except Exception as exc:      # torch itself missing
    cuda, device = False, f'torch not importable: {exc}'
tests, counts, total = {}, {'passed': 0, 'failed': 0, 'skipped': 0}, 0.0
try:
    root = ET.parse(sys.argv[1]).getroot()
except (OSError, ET.ParseError):
    root = None
for case in (root.iter('testcase') if root is not None else []):
    seconds = float(case.get('time', 0))
    total += seconds
    outcome, reason = 'passed', None
    for tag in ('failure', 'error', 'skipped'):
        node = case.find(tag)
        if node is not None:
            outcome = 'skipped' if tag == 'skipped' else 'failed'
            reason = (node.get('message') or '')[:300]
    counts[outcome] += 1
    tests[case.get('name')] = {'outcome': outcome, 'seconds': round(seconds, 2),
                               'reason': reason}
ok = root is not None and counts['failed'] == 0 and counts['passed'] > 0
print(json.dumps({'cuda': cuda, 'device': device, **counts, 'ok': ok,
                  'seconds': round(total, 1), 'tests': tests}))
sys.exit(0 if ok else 1)
PYEOF
