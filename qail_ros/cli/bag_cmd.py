"""`qail-ros bag info PATH` and `qail-ros bag recover PATH`: inspect and repair rosbag2 bags.

`info` prints what `ros2 bag info` prints (files, size, duration, start/end, message count,
topics with type, count and offered QoS) plus custom metadata, and says when a bag was not
closed. `recover` (alias `reindex`) repairs a bag whose writer crashed: keeps every complete
mcap chunk, writes the mcap summary and footer and a new metadata.yaml.
"""
from __future__ import annotations

import datetime as _dt
import json

HELP = 'inspect (info) or repair after a crash (recover) a rosbag2 bag'


def add_arguments(parser) -> None:
    sub = parser.add_subparsers(dest='bag_command', metavar='ACTION')
    info = sub.add_parser('info', help='topics, types, counts, duration, size, custom metadata')
    info.add_argument('path', help='bag directory (or a .mcap / .db3 file)')
    info.add_argument('--json', action='store_true', help='print one JSON object')
    for name in ('recover', 'reindex'):
        rec = sub.add_parser(name, help='repair a bag whose writer was killed: keep every '
                                        'complete chunk, write summary and metadata.yaml')
        rec.add_argument('path', help='bag directory')
        rec.add_argument('--force', action='store_true',
                         help='rewrite metadata.yaml even if the bag looks complete')
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
            'files': [p.name for p in bag.files], 'size_bytes': bag.size_bytes,
            'message_count': bag.message_count, 'start_ns': bag.start_ns, 'end_ns': bag.end_ns,
            'duration_s': bag.duration_ns / 1e9, 'recovered': bag.recovered,
            'custom_metadata': bag.custom_metadata,
            'topics': [{'name': t.name, 'type': t.msgtype, 'count': t.count,
                        'qos': _qos_text(t.qos)} for t in bag.topics.values()],
        }
    if as_json:
        print(json.dumps(data))
        return 0
    print(f'Files:             {", ".join(data["files"])}')
    print(f'Bag size:          {_size(data["size_bytes"])}')
    print(f'Storage id:        {data["storage"]} (rosbag2 format '
          f'{data["version"] or "unknown"})')
    print(f'Duration:          {data["duration_s"]:.3f} s')
    if data['message_count']:
        print(f'Start:             {_stamp(data["start_ns"])}')
        print(f'End:               {_stamp(data["end_ns"])}')
    print(f'Messages:          {data["message_count"]}')
    if data['custom_metadata']:
        items = sorted(data['custom_metadata'].items())
        print('Custom metadata:   ' + ', '.join(f'{k}={v}' for k, v in items))
    if data['recovered']:
        print(f'Status:            NOT CLOSED (writer crashed?): complete chunks shown; '
              f'repair with `qail-ros bag recover {path}`')
    width = max([len(t['name']) for t in data['topics']] + [5])
    twidth = max([len(t['type']) for t in data['topics']] + [4])
    print('Topic information:')
    print(f'  {"Topic":<{width}}  {"Type":<{twidth}}  {"Count":>7}  QoS')
    for t in data['topics']:
        print(f'  {t["name"]:<{width}}  {t["type"]:<{twidth}}  {t["count"]:>7}  {t["qos"]}')
    return 0


def recover(path: str, force: bool) -> int:
    from qail_ros.bag import recover_bag
    report = recover_bag(path, force=force)
    print(f'{report["path"]}: {report["action"]}')
    print(f'  storage {report["storage"]}, file {report["file"]}, '
          f'{report["messages"]} messages kept'
          + (f' in {report["chunks"]} chunks' if 'chunks' in report else '')
          + (f', {report["truncated_bytes"]} bytes of partial data dropped'
             if report.get('truncated_bytes') else ''))
    if report.get('stop_reason') and report['action'].startswith('repaired'):
        print(f'  the file ended with: {report["stop_reason"]}')
    return 0


def main(args) -> int:
    command = getattr(args, 'bag_command', None)
    if command == 'info':
        return info(args.path, args.json)
    if command in ('recover', 'reindex'):
        return recover(args.path, args.force)
    args._bag_parser.print_help()
    return 2
