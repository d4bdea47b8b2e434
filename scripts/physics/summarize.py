"""Print the Markdown table of measured returns from the shipped manifests (no evaluation).

  python scripts/physics/summarize.py
"""
from __future__ import annotations

from qail_ros import physics


def main() -> int:
    print('| task | expert | FP MLP (BC) | random | paper FP (3x2048) | FP architecture |')
    print('|---|---|---|---|---|---|')
    for task in physics.TASKS:
        if task not in physics.shipped_tasks():
            print(f'| {task} | not shipped | | | | |')
            continue
        m = physics.load_manifest(task)
        fp, ex, rnd = m['fp_policy'], m['expert'], m['random_policy']['return']
        arch = fp['architecture']
        how = 'LQR' if ex['kind'] == 'CartpoleLQR' else (
            f'SAC ({ex["how"].get("env_steps", "?")} env steps, '
            f'{ex["how"].get("minutes", "?")} min)')
        print(f'| {task} | {how} {ex["return"]["mean"]:.1f} +- {ex["return"]["std"]:.1f} | '
              f'{fp["return"]["mean"]:.1f} +- {fp["return"]["std"]:.1f} | '
              f'{rnd["mean"]:.1f} +- {rnd["std"]:.1f} | {m["paper_fp_return"]} | '
              f'{arch["layers"]} x {arch["hidden"]} |')
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
