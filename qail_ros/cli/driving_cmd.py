"""`qail-ros driving eval|ship|measure`: the closed-loop driving tools (highway-env).

`eval ENGINE` drives routes with a CILRS engine file exactly as the cilrs_policy node runs it
(qail_ros.driving.engine_policy) and prints each route's outcome and the metrics (`--json`: one
JSON object on the last line). `ship --fp FP` trains the W4A4 student of a `qail-ros bench
driving` FP model, builds the engines shipped in models/cilrs-highway/ and evaluates them
(qail_ros.driving.ship). `measure` measures the benchmark itself: expert and baseline metrics
per town and density and the simulation speed (qail_ros.driving.measure).
"""
from __future__ import annotations

import json

HELP = 'drive routes with a CILRS engine (eval), build the shipped engines (ship), measure the ' \
       'benchmark (measure)'


def add_arguments(parser) -> None:
    sub = parser.add_subparsers(dest='driving_command', metavar='ACTION')
    p = sub.add_parser('eval', help='closed-loop metrics of a CILRS engine file')
    p.add_argument('engine', help='engine file (or its manifest)')
    p.add_argument('--town', default='highway')
    p.add_argument('--density', default='regular')
    p.add_argument('--routes', type=int, default=10)
    p.add_argument('--seed', type=int, default=0, help='first route seed')
    p.add_argument('--view-m', type=float, default=None,
                   help="camera coverage in metres (default: the engine's manifest, else 80)")
    p.add_argument('--threads', type=int, default=1)
    p.add_argument('--json', action='store_true', help='print the result as one JSON line')
    p.set_defaults(_driving_main=_eval)

    p = sub.add_parser('ship', help='train the W4A4 student of a bench-driving FP model, build '
                                    'and evaluate the shipped engines')
    p.add_argument('--fp', required=True, help='FP CILRS of `qail-ros bench driving`')
    p.add_argument('--out', default='models/cilrs-highway')
    p.add_argument('--work', default='bench-results/ship-work',
                   help='where the student and its training record are kept (not shipped)')
    p.add_argument('--seed', type=int, default=0, help='training seed of the student')
    p.add_argument('--routes', type=int, default=20, help='evaluation routes per cell (0: none)')
    p.add_argument('--town', default='highway,merge')
    p.add_argument('--densities', default='empty,regular,dense')
    p.set_defaults(_driving_main=_ship)

    p = sub.add_parser('measure', help='expert and baseline metrics per town and density, '
                                       'simulation speed')
    p.add_argument('--routes', type=int, default=20)
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--towns', nargs='+', default=None, help='default: every layout')
    p.add_argument('--densities', nargs='+', default=None, help='default: every density')
    p.add_argument('--baselines', nargs='*', default=['zero', 'random'],
                   help='baselines run at regular density (zero, random)')
    p.add_argument('--camera', type=int, nargs=2, default=(200, 88), metavar=('W', 'H'),
                   help='camera size for the with-camera speed measurement')
    p.add_argument('--json', default='', metavar='FILE',
                   help='also write the JSON object (always printed last) to FILE')
    p.set_defaults(_driving_main=_measure)
    parser.set_defaults(_driving_parser=parser)


def _eval(args) -> int:
    try:
        import torch
        torch.set_num_threads(max(1, args.threads))
    except ImportError:
        pass
    from qail_ros.driving.engine_policy import EnginePolicy, evaluate_engine
    policy = EnginePolicy(args.engine, threads=args.threads)
    m = evaluate_engine(policy, args.town, args.density, args.routes, args.seed,
                        view_m=args.view_m)
    for e in m['episodes_detail']:
        print(f"seed {e['seed']}: {e['outcome']}, route {100 * e['route_completion']:.0f}% "
              f"in {e['steps']} steps")
    print(f"{policy}: {args.town}/{args.density}, {m['episodes']} routes: success "
          f"{m['success_rate']:.2f}, collision {m['collision_rate']:.2f}, route completion "
          f"{m['route_completion']:.3f}")
    if args.json:
        print(json.dumps(m))
    return 0


def _ship(args) -> int:
    from qail_ros.driving.ship import ship
    from qail_ros.training.logs import show_progress
    show_progress()             # the student's training and the evaluation report to stderr
    result = ship(args.fp, args.out, work=args.work, seed=args.seed, routes=args.routes,
                  towns=args.town.split(','), densities=args.densities.split(','))
    print(f"engines in {args.out}: {', '.join(result['engines'])}"
          + (f"; closed loop in {args.out}/closed_loop.json" if args.routes else ''))
    return 0


def _measure(args) -> int:
    from qail_ros.driving.measure import measure
    out = measure(args.routes, args.seed, args.towns, args.densities, args.baselines,
                  args.camera, log=lambda msg: print(msg, flush=True))
    text = json.dumps(out, default=float)
    if args.json:
        with open(args.json, 'w', encoding='utf-8') as f:
            f.write(text + '\n')
    print(text)
    return 0


def main(args) -> int:
    if not getattr(args, '_driving_main', None):
        args._driving_parser.print_help()
        return 2
    return int(args._driving_main(args) or 0)
