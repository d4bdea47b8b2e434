"""Print the Markdown table of measured returns from teacher manifests (no evaluation).

  python scripts/physics/summarize.py                       # the shipped tasks
  python scripts/physics/summarize.py runs/teachers/*       # your teacher directories
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from qail_ros import physics


def row(m: dict) -> str:
    fp, ex, rnd = m['fp_policy'], m['expert'], m['random_policy']['return']
    arch = fp['architecture']
    how = 'LQR' if ex['kind'] == 'CartpoleLQR' else (
        f'SAC ({ex["how"].get("env_steps", "?")} env steps, '
        f'{ex["how"].get("minutes", "?")} min)')
    return (f'| {m["task"]} | {how} {ex["return"]["mean"]:.1f} +- {ex["return"]["std"]:.1f} | '
            f'{fp["return"]["mean"]:.1f} +- {fp["return"]["std"]:.1f} | '
            f'{rnd["mean"]:.1f} +- {rnd["std"]:.1f} | {m.get("paper_fp_return") or "-"} | '
            f'{arch["layers"]} x {arch["hidden"]} |')


def main(argv: list[str]) -> int:
    print('| task | expert | FP MLP (BC) | random | paper FP (3x2048) | FP architecture |')
    print('|---|---|---|---|---|---|')
    if argv:
        for d in argv:
            print(row(json.loads((Path(d) / 'manifest.json').read_text())))
        return 0
    for task in physics.TASKS:
        if task not in physics.shipped_tasks():
            print(f'| {task} | not shipped | | | | |')
            continue
        print(row(physics.load_manifest(task)))
    return 0


if __name__ == '__main__':
    raise SystemExit(main(sys.argv[1:]))
