#!/usr/bin/env bash
# The physics pipeline end to end on the embedded runtime (docs/walkthrough.md):
#   record -> dataset -> train -> export -> launch
#
#   bash scripts/walkthrough.sh                      # cartpole-balance, full size (~5 min)
#   TASK=walker-stand EPISODES=20 STEPS=2000 bash scripts/walkthrough.sh
#   TINY=1 bash scripts/walkthrough.sh               # the CI size (~1 min)
#   TEACHER=runs/teachers/cartpole-swingup bash scripts/walkthrough.sh   # your own teacher
#   TASK=gym:InvertedPendulum-v5 bash scripts/walkthrough.sh  # no teacher yet: trains one
#                                                    # first (qail-ros train-expert, 30 min)
#
# Every step is a plain qail-ros command; the script only chains them. Results go to $OUT.
set -euo pipefail

TEACHER=${TEACHER:-}
QAIL_ROS=${QAIL_ROS:-qail-ros}
PY=${PY:-python3}
if [[ -n "$TEACHER" && -z "${TASK:-}" ]]; then
  TASK=$($PY -c 'import json, sys; print(json.load(open(sys.argv[1]))["task"])' \
    "$TEACHER/manifest.json")
fi
TASK=${TASK:-cartpole-balance}
OUT=${OUT:-runs/walkthrough/$(echo "$TASK" | tr -c 'A-Za-z0-9._\n-' '_')}
if [[ -n "${TINY:-}" ]]; then
  EPISODES=${EPISODES:-3}; MAX_STEPS=${MAX_STEPS:-100}; STEPS=${STEPS:-60}
  DRIVE_EPISODES=${DRIVE_EPISODES:-2}; EVAL_EPISODES=${EVAL_EPISODES:-0}
else
  EPISODES=${EPISODES:-10}; MAX_STEPS=${MAX_STEPS:-0}; STEPS=${STEPS:-2000}
  DRIVE_EPISODES=${DRIVE_EPISODES:-5}; EVAL_EPISODES=${EVAL_EPISODES:-10}
fi
BITS=${BITS:-w4a4}
EXPERT_FLAGS=${EXPERT_FLAGS:-}           # e.g. --minutes 10 (train-expert, when no teacher)
LAUNCH_FLAGS=${LAUNCH_FLAGS:-}            # e.g. --composed: every node in one process

say() { printf '\n== %s\n' "$*"; }
rm -rf "$OUT"
mkdir -p "$OUT"

if [[ -z "$TEACHER" ]] && ! $QAIL_ROS eval --task "$TASK" --policy fp --episodes 1 \
    >/dev/null 2>&1; then
  say "-1. no FP policy ships for $TASK: train its teacher (SAC expert + FP MLP)"
  TEACHER="$OUT/teacher"
  if [[ -n "${TINY:-}" ]]; then
    EXPERT_FLAGS="--steps 2000 --fp-steps 200 --fp-episodes 2 --fp-noise-episodes 2 $EXPERT_FLAGS"
  fi
  $QAIL_ROS train-expert --task "$TASK" -o "$TEACHER" --no-progress $EXPERT_FLAGS
fi

if [[ -n "$TEACHER" ]]; then
  say "0. the FP policy of the teacher $TEACHER ($TASK) as an engine"
  $QAIL_ROS export fp --teacher "$TEACHER" -o "$OUT/engines" --name fp32
else
  say "0. the shipped FP policy of $TASK as an engine"
  $QAIL_ROS export fp --task "$TASK" -o "$OUT/engines" --name fp32
fi

say "1. record D_FP: the FP engine drives $TASK, fp_recorder writes one bag per episode"
$QAIL_ROS launch physics_record $LAUNCH_FLAGS task:="$TASK" \
  engine:="$OUT/engines/fp32.safetensors" episodes:="$EPISODES" max_steps:="$MAX_STEPS" \
  output_dir:="$OUT/bags" --duration 1800

say "2. bags -> data set"
$QAIL_ROS dataset build "$OUT/bags" -o "$OUT/dataset"
$QAIL_ROS dataset info "$OUT/dataset"

say "3. QAIL + QBC ($BITS): teacher = the FP engine, D_FP = the recorded data set"
$QAIL_ROS train --teacher "$OUT/engines/fp32.safetensors" --data "$OUT/dataset" \
  --config config/qail_physics.yaml --bits "$BITS" --steps "$STEPS" \
  --eval-episodes "$EVAL_EPISODES" --no-progress -o "$OUT/train"

say "4. export the student to an int8-kernel engine with its manifest"
$QAIL_ROS export "$OUT/train" -o "$OUT/engines" --name "$BITS" --data "$OUT/dataset"

say "5. launch: the $BITS engine drives $TASK through the same topics"
$QAIL_ROS launch physics_drive $LAUNCH_FLAGS task:="$TASK" \
  engine:="$OUT/engines/$BITS.safetensors" expect_precision:="$BITS" \
  episodes:="$DRIVE_EPISODES" max_steps:="$MAX_STEPS" rate_hz:=1000.0 --duration 1800 \
  | tee "$OUT/drive.log"

say "done: $OUT"
