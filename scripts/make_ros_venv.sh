#!/usr/bin/env bash
# Build (or reuse) the isolated ROS 2 virtual environment of the rclpy integration tier.
#
#   scripts/make_ros_venv.sh [VENV_DIR]      default: .venv-ros in the repository root
#   PYTHON=python3.12 scripts/make_ros_venv.sh   interpreter to base it on (CPython 3.10-3.13)
#
# It installs requirements-ros.txt (the ros-python-wheels ROS 2 Kilted wheels: rclpy, Fast DDS,
# message packages; plus numpy, PyYAML, rosbags) and nothing else: qail_ros itself is used from
# the checkout through PYTHONPATH. Those wheels carry a .pth file that re-executes Python with
# LD_LIBRARY_PATH set, so they must stay out of .venv. The venv is rebuilt only when
# requirements-ros.txt or the Python version changes (a key in VENV_DIR/.qail_ros-ros-venv);
# concurrent callers wait on a lock. Prints one line `ros-venv: ...` with time and size.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${1:-$ROOT/.venv-ros}"
PYTHON="${PYTHON:-python3}"
REQ="$ROOT/requirements-ros.txt"

pyver="$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
key="$(sha256sum "$REQ" | cut -c1-16)-py$pyver"

mkdir -p "$(dirname "$VENV")"
VENV="$(cd "$(dirname "$VENV")" && pwd)/$(basename "$VENV")"
# The lock lives outside the repository (nothing to git-ignore), one per venv path.
exec 9>"${TMPDIR:-/tmp}/qail_ros-ros-venv-$(echo "$VENV" | sha256sum | cut -c1-12).lock"
flock 9
STAMP="$VENV/.qail_ros-ros-venv"

if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$key" ] && [ -x "$VENV/bin/python" ]; then
    echo "ros-venv: reused $VENV ($key)"
    exit 0
fi

start=$(date +%s)
rm -rf "$VENV"
"$PYTHON" -m venv "$VENV"
# Wheels wherever one exists (empy and lark-parser are pure-Python sdists only).
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --prefer-binary -r "$REQ"
# Importing rclpy goes through the bootstrapper's re-exec and loads rcl and Fast DDS: proof
# that the environment works, not only that it installed (discovery off: nothing on the network).
ROS_AUTOMATIC_DISCOVERY_RANGE=OFF "$VENV/bin/python" -c \
    'import rclpy, rosbags, numpy, yaml; rclpy.init(args=[]); rclpy.shutdown()'
echo "$key" > "$STAMP"
echo "ros-venv: built $VENV ($key) in $(( $(date +%s) - start )) s," \
    "$(du -sm "$VENV" | cut -f1) MiB"
