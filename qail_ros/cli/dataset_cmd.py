"""`qail-ros dataset build|info|export-lerobot`: bags -> training data sets.

    qail-ros dataset build BAGS... -o DATASET [--topic-map map.yaml] [--val-fraction 0.1]
                                              [--drop-failed] [--drop-incomplete]
                                              [--image-size H W] [--shard-frames 1000]
                                              [--workers N]
    qail-ros dataset info DATASET [--json]
    qail-ros dataset export-lerobot DATASET OUT [--fps N] [--robot-type NAME]

See docs/dataset.md.
"""
from __future__ import annotations

import json
import sys

HELP = 'build training data sets from bags, inspect them, export to LeRobot v3'


def add_arguments(parser) -> None:
    sub = parser.add_subparsers(dest='dataset_command', metavar='SUBCOMMAND')
    b = sub.add_parser('build', help='bags -> safetensors shards + manifest.json')
    b.add_argument('bags', nargs='+', help='bag directories (or directories holding bags)')
    b.add_argument('-o', '--output', required=True, help='data set directory to create')
    b.add_argument('--topic-map', default=None, help='YAML topic map (needed for bags not '
                   'written by fp_recorder)')
    b.add_argument('--val-fraction', type=float, default=0.1,
                   help='fraction of episodes held out for validation')
    b.add_argument('--drop-failed', action='store_true', help='leave out episodes marked '
                   'success=false')
    b.add_argument('--drop-incomplete', action='store_true', help='leave out episodes not '
                   'ended properly (Ctrl-C, crash, write error)')
    b.add_argument('--image-size', type=int, nargs=2, metavar=('H', 'W'), default=None,
                   help='resize images to H x W')
    b.add_argument('--shard-frames', type=int, default=1000, help='samples per shard')
    b.add_argument('--seed', type=int, default=0, help='seed of the train/val split')
    b.add_argument('--workers', type=int, default=1,
                   help='processes reading the bags in parallel (0 = one per CPU; default 1); '
                        'the data set is the same whatever the number')
    i = sub.add_parser('info', help='episodes, frames, durations, topics, statistics')
    i.add_argument('dataset')
    i.add_argument('--json', action='store_true', help='print the manifest summary as JSON')
    e = sub.add_parser('export-lerobot', help='write the LeRobot v3.0 data set layout')
    e.add_argument('dataset')
    e.add_argument('output')
    e.add_argument('--fps', type=int, default=None, help='frames per second (default: '
                   'measured from the episodes)')
    e.add_argument('--robot-type', default=None)
    parser.set_defaults(_dataset_parser=parser)


def _fmt(values, digits=3) -> str:
    return '[' + ', '.join(f'{v:.{digits}g}' for v in values) + ']'


def _info(args) -> int:
    from qail_ros.dataset import load_manifest
    man = load_manifest(args.dataset)
    eps = man['episodes']
    if args.json:
        print(json.dumps({k: man[k] for k in ('format', 'frames', 'features', 'splits', 'stats',
                                              'pairing', 'filters', 'tasks')}
                         | {'episodes': len(eps)}))
        return 0
    total = sum(e['duration_s'] for e in eps)
    print(f"{args.dataset}: {len(eps)} episodes, {man['frames']} frames, {total:.1f} s "
          f"(train {len(man['splits']['train'])} / val {len(man['splits']['val'])} episodes)")
    print('episodes:')
    for e in eps:
        print(f"  {e['index']:4d} {e['split']:5s} {e['frames']:6d} frames {e['duration_s']:8.2f} s"
              f"  success={e['success']:7s} policy={e['policy_id'] or '-'} "
              f"{e['precision'] or ''}  task={e['task']!r}"
              + ('  (recovered bag)' if e['recovered'] else ''))
    print('topics:')
    for topic, role in man['topics'].items():
        print(f'  {topic:40s} {role}')
    print('features:')
    for key, spec in man['features'].items():
        print(f"  {key:32s} {spec['dtype']:8s} {spec['shape']}")
    print(f"pairing: {man['pairing']}")
    if man['filters']['dropped_episodes']:
        print(f"dropped episodes: {man['filters']['dropped_episodes']}")
    print(f"statistics ({man['stats_split']} split, {man['stats']['num_transitions']} "
          'transitions):')
    for key in ('action', 'observation.state', 'observation.command'):
        st = man['stats'].get(key)
        if st:
            print(f'  {key}:')
            for name in ('mean', 'std', 'min', 'max', 'q01', 'q99'):
                print(f'    {name:5s} {_fmt(st[name])}')
    return 0


def _workers(args) -> dict:
    from qail_ros.dataset.parallel import default_workers
    n = getattr(args, 'workers', 1)
    return {'workers': default_workers() if n == 0 else max(1, n)}


def main(args) -> int:
    cmd = getattr(args, 'dataset_command', None)
    if cmd is None:
        args._dataset_parser.print_help()
        return 2
    if cmd == 'info':
        return _info(args)
    if cmd == 'build':
        from qail_ros.dataset import build_dataset
        man = build_dataset(args.bags, args.output, topic_map=args.topic_map,
                            val_fraction=args.val_fraction, drop_failed=args.drop_failed,
                            drop_incomplete=args.drop_incomplete,
                            image_size=tuple(args.image_size) if args.image_size else None,
                            shard_frames=args.shard_frames, seed=args.seed,
                            progress=lambda text: print(text, file=sys.stderr),
                            **_workers(args))
        print(f"{args.output}: {len(man['episodes'])} episodes, {man['frames']} samples in "
              f"{len(man['shards'])} shards; pairing {man['pairing']}")
        return 0
    if cmd == 'export-lerobot':
        from qail_ros.dataset import export_lerobot
        info = export_lerobot(args.dataset, args.output, fps=args.fps,
                              robot_type=args.robot_type)
        print(f"{args.output}: LeRobot {info['codebase_version']} data set, "
              f"{info['total_episodes']} episodes, {info['total_frames']} frames at "
              f"{info['fps']} fps")
        return 0
    return 2
