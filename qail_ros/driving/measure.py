"""Measure the driving benchmark itself: expert and baseline metrics per layout and density,
and simulation speed with and without the camera.

    python -m qail_ros.driving.measure --routes 20 [--towns highway merge roundabout]
                                       [--json out.json]

Prints one line per (policy, town, density) and, last, a JSON object of everything (the same
is written to --json). Routes are env seeds seed..seed+routes-1 (the evaluation seeds).
"""
from __future__ import annotations

import argparse
import json
import sys


def main(argv: list[str] | None = None) -> int:
    from qail_ros import driving
    p = argparse.ArgumentParser(prog='python -m qail_ros.driving.measure', description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--routes', type=int, default=20)
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--towns', nargs='+', default=list(driving.LAYOUTS))
    p.add_argument('--densities', nargs='+', default=list(driving.DENSITIES))
    p.add_argument('--baselines', nargs='*', default=['zero', 'random'],
                   help='baselines run at regular density (zero, random)')
    p.add_argument('--camera', type=int, nargs=2, default=(200, 88), metavar=('W', 'H'),
                   help='camera size for the with-camera speed measurement')
    p.add_argument('--json', default='')
    args = p.parse_args(argv)
    out: dict[str, dict] = {}
    for town in args.towns:
        for density in args.densities:
            m = driving.evaluate(driving.ExpertPolicy(), density, args.routes, args.seed, town)
            out[f'expert/{town}/{density}'] = m
            print(f'expert  {town:10s} {density:8s} success {m["success_rate"]:.2f} collision '
                  f'{m["collision_rate"]:.2f} route {m["route_completion"]:.2f} '
                  f'({m["steps_per_s"]:.0f} steps/s, no camera)', flush=True)
        for name in args.baselines:
            policy = driving.zero_policy if name == 'zero' else driving.random_policy(args.seed)
            m = driving.evaluate(policy, 'regular', args.routes, args.seed, town)
            out[f'{name}/{town}/regular'] = m
            print(f'{name:7s} {town:10s} regular  success {m["success_rate"]:.2f} collision '
                  f'{m["collision_rate"]:.2f} route {m["route_completion"]:.2f}', flush=True)
    r = driving.rollout(driving.ExpertPolicy(), 'regular', args.towns[0], episodes=2,
                        seed=args.seed, image_size=tuple(args.camera), record=True)
    out['camera_steps_per_s'] = {'town': args.towns[0], 'image_size': list(args.camera),
                                 'steps_per_s': r.steps_per_s}
    print(f'with a {args.camera[0]}x{args.camera[1]} camera: {r.steps_per_s:.0f} steps/s')
    text = json.dumps(out, default=float)
    if args.json:
        with open(args.json, 'w', encoding='utf-8') as f:
            f.write(text + '\n')
    print(text)
    return 0


if __name__ == '__main__':
    sys.exit(main())
