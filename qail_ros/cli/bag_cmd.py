"""`qail-ros bag info|recover|play`: inspect, repair and replay bags (rosbag2 and ROS 1).

`info` prints what `ros2 bag info` prints (files, size, duration, start/end, message count,
topics with type, count and offered QoS) plus custom metadata and where each type's definition
comes from, and says when a bag was not closed. `recover` (alias `reindex`) writes a repaired
copy of a bag whose writer crashed beside it (docs/bags.md); `--json` prints
{"recovered", "expected", "lost", "output", ...} as its last line. `play` publishes a bag's
messages at their recorded pace, with /clock (qail_ros.bag.play).
"""
from __future__ import annotations

import datetime as _dt
import json

HELP = 'inspect (info), repair after a crash (recover) or replay (play) a bag'


def add_arguments(parser) -> None:
    sub = parser.add_subparsers(dest='bag_command', metavar='ACTION')
    info = sub.add_parser('info', help='topics, types, counts, duration, size, custom metadata')
    info.add_argument('path', help='bag directory (or a .mcap / .db3 / ROS 1 .bag file)')
    info.add_argument('--json', action='store_true', help='print one JSON object')
    for name in ('recover', 'reindex'):
        rec = sub.add_parser(name, help='repair a bag whose writer was killed: a copy beside '
                                        'it with every message that reached the disk')
        rec.add_argument('path', help='bag directory')
        rec.add_argument('-o', '--output', default=None,
                         help='where the repaired bag goes (default: PATH.recovered)')
        rec.add_argument('--in-place', action='store_true',
                         help='replace the original files (no copy is kept)')
        rec.add_argument('--force', action='store_true',
                         help='recover even if a process has the bag open or it changed in '
                              'the last seconds, or it looks complete')
        rec.add_argument('--json', action='store_true',
                         help='print the report as one JSON object (last line)')
    from qail_ros.bag.play import add_play_arguments
    add_play_arguments(sub.add_parser('play', help='publish a bag at its recorded pace, '
                                                   'with /clock (like ros2 bag play)'))
    parser.set_defaults(_bag_parser=parser)


def _size(n: int) -> str:
    for unit in ('B', 'KiB', 'MiB', 'GiB'):
        if n < 1024 or unit == 'GiB':
            return f'{n:.1f} {unit}' if unit != 'B' else f'{n} B'
        n /= 1024
    return f'{n:.1f} GiB'


def _stamp(ns: int) -> str:
    when = _dt.datetime.fromtimestamp(ns / 1e9, tz=_dt.timezone.utc)
    return f'{when:%Y-%m-%d %H:%M:%S.%f} UTC ({ns / 1e9:.9f})'


def _qos_text(qos: list) -> str:
    if not qos:
        return '-'
    q = qos[0]
    return (f'{q.reliability.name.lower()}, {q.durability.name.lower()}, '
            f'{q.history.name.lower()} {q.depth}')


def info(path: str, as_json: bool) -> int:
    import logging

    from qail_ros.bag import BagReader
    logging.getLogger('qail_ros.bag').setLevel(logging.ERROR)   # the Status line says it
    with BagReader(path) as bag:
        data = {
            'path': str(bag.path), 'storage': bag.storage, 'version': bag.version,
            'ros_distro': bag.ros_distro,
            'compression': {'format': bag.compression[0], 'mode': bag.compression[1]},
            'files': [p.name for p in bag.files], 'size_bytes': bag.size_bytes,
            'message_count': bag.message_count, 'start_ns': bag.start_ns, 'end_ns': bag.end_ns,
            'duration_s': bag.duration_ns / 1e9, 'recovered': bag.recovered,
            'custom_metadata': bag.custom_metadata,
            'topics': [{'name': t.name, 'type': t.msgtype, 'count': t.count,
                        'qos': _qos_text(t.qos), 'type_hash': t.type_hash,
                        'definition': ('bag, differs from Jazzy' if t.msgtype in
                                       bag.types.differs else 'bag' if t.msgtype in
                                       bag.types.own else 'qail_ros (Jazzy)')}
                       for t in bag.topics.values()],
        }
    if as_json:
        print(json.dumps(data))
        return 0
    print(f'Files:             {", ".join(data["files"])}')
    print(f'Bag size:          {_size(data["size_bytes"])}')
    if data['storage'] == 'rosbag1':
        print('Storage id:        rosbag1 (ROS 1 bag)')
    else:
        print(f'Storage id:        {data["storage"]} (rosbag2 format '
              f'{data["version"] or "unknown"})')
    if data['compression']['mode']:
        print(f'Compression:       {data["compression"]["format"]} per '
              f'{data["compression"]["mode"]}')
    print(f'Duration:          {data["duration_s"]:.3f} s')
    if data['message_count']:
        print(f'Start:             {_stamp(data["start_ns"])}')
        print(f'End:               {_stamp(data["end_ns"])}')
    print(f'Messages:          {data["message_count"]}')
    if data['custom_metadata']:
        items = sorted(data['custom_metadata'].items())
        print('Custom metadata:   ' + ', '.join(f'{k}={v}' for k, v in items))
    if data['recovered']:
        print(f'Status:            NOT CLOSED (writer crashed?): the messages that reached the '
              f'disk are shown; write a repaired copy with `qail-ros bag recover {path}`')
    width = max([len(t['name']) for t in data['topics']] + [5])
    twidth = max([len(t['type']) for t in data['topics']] + [4])
    print('Topic information:')
    print(f'  {"Topic":<{width}}  {"Type":<{twidth}}  {"Count":>7}  QoS')
    for t in data['topics']:
        print(f'  {t["name"]:<{width}}  {t["type"]:<{twidth}}  {t["count"]:>7}  {t["qos"]}')
    differ = [t['type'] for t in data['topics'] if t['definition'].startswith('bag, differs')]
    if differ:
        print('Decoded with the bag\'s own definitions (they differ from Jazzy\'s): '
              + ', '.join(sorted(set(differ))))
    return 0


def recover(args) -> int:
    from qail_ros.bag import recover_bag
    report = recover_bag(args.path, output=args.output, in_place=args.in_place,
                         force=args.force)
    if args.json:
        keys = ('recovered', 'expected', 'lost', 'output')
        print(json.dumps({k: report[k] for k in keys}
                         | {k: v for k, v in report.items() if k not in keys}))
        return 0
    print(f'{report["path"]}: {report["action"]}')
    expected = ('unknown' if report['expected'] is None else report['expected'])
    lost = '?' if report['lost'] is None else report['lost']
    print(f'  storage {report["storage"]}, files {", ".join(report["files"])}')
    print(f'  recovered {report["recovered"]} of {expected} messages (expected from '
          f'{report["expected_from"]}), lost {lost}')
    for note in report['notes']:
        print(f'  {note}')
    return 0


def main(args) -> int:
    command = getattr(args, 'bag_command', None)
    if command == 'info':
        return info(args.path, args.json)
    if command in ('recover', 'reindex'):
        return recover(args)
    if command == 'play':
        from qail_ros.bag.play import play_main
        return play_main(args)
    args._bag_parser.print_help()
    return 2
