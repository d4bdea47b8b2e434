"""`qail-ros topic list|echo|hz`: look at the embedded runtime's topics, like `ros2 topic`.

Topics are found on the liveliness graph that rmw_zenoh-style nodes announce
(`@ros2_lv/<domain>/...`), through the router of `QAIL_ROS_ZENOH_ROUTER` (default
tcp/127.0.0.1:7447). Needs that router: start one with `qail-ros router`.
"""
from __future__ import annotations

import contextlib
import math
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

HELP = 'list topics on the graph, print their messages (echo) or their rate (hz)'


def add_arguments(parser) -> None:
    sub = parser.add_subparsers(dest='topic_command', metavar='VERB')
    p = sub.add_parser('list', help='topics announced on the graph')
    p.add_argument('-t', '--show-types', action='store_true', help='print each topic\'s type')
    p.add_argument('-v', '--verbose', action='store_true',
                   help='also print publisher / subscription counts')
    p.add_argument('--wait', type=float, default=0.5, help='seconds to collect the graph')
    p = sub.add_parser('echo', help='print the messages of a topic')
    p.add_argument('topic')
    p.add_argument('type', nargs='?', default=None,
                   help='message type (default: from the graph)')
    p.add_argument('--once', action='store_true', help='print one message and exit')
    p.add_argument('--count', type=int, default=0, help='exit after this many messages')
    p.add_argument('--full-arrays', action='store_true',
                   help='print whole arrays (default: length and the first values)')
    p.add_argument('--timeout', type=float, default=None, help='give up after seconds')
    p = sub.add_parser('hz', help='print the receive rate of a topic')
    p.add_argument('topic')
    p.add_argument('--window', type=int, default=10000, help='messages in the statistics')
    p.add_argument('--duration', type=float, default=None, help='stop after seconds')
    parser.set_defaults(_topic_parser=parser)


def _runtime():
    from qail_ros.runtime import set_runtime
    from qail_ros.runtime import zenoh_transport as zt
    from qail_ros.runtime.embedded import EmbeddedRuntime
    from qail_ros.errors import TransportError
    if not zt.router_reachable():
        raise TransportError(f'no Zenoh router at {zt.router_endpoint()}: start one with '
                             "'qail-ros router' (nodes must use the same router), or set "
                             'QAIL_ROS_ZENOH_ROUTER')
    rt = EmbeddedRuntime(transport='zenoh')
    set_runtime(rt)
    rt.init([])
    if rt.transport is None:  # opens the session now, so the graph starts filling
        raise TransportError('the Zenoh transport could not start (see the warning above)')
    return rt


@contextlib.contextmanager
def _session() -> Iterator[Any]:
    """The embedded runtime on the router's graph, shut down at the end."""
    rt = _runtime()
    try:
        yield rt
    finally:
        rt.shutdown()


def _subscribe(rt, args, verb: str, callback: Callable[[Any], None]):
    """Node qail_ros_topic_VERB subscribed to args.topic (the type: args.type, or the graph's)."""
    from qail_ros.runtime import Node
    topic = args.topic if args.topic.startswith('/') else '/' + args.topic
    msgtype = getattr(args, 'type', None) or _graph_type(rt, topic)
    node = Node(f'qail_ros_topic_{verb}', runtime=rt)
    node.create_subscription(msgtype, topic, callback, 10)
    return node


def _graph_type(rt, topic: str, wait_s: float = 2.0) -> str:
    from qail_ros.errors import QailRosError
    end = time.monotonic() + wait_s
    while True:
        types = {e.msgtype for e in rt.transport.graph() if e.topic == topic}
        if types:
            if len(types) > 1:
                raise QailRosError(f"topic '{topic}' has several types {sorted(types)}; give "
                                   'the type: qail-ros topic echo TOPIC TYPE')
            return types.pop()
        if time.monotonic() > end:
            raise QailRosError(f"topic '{topic}' is not on the graph (see 'qail-ros topic "
                               "list'); give its type to wait for it: qail-ros topic echo "
                               'TOPIC TYPE')
        time.sleep(0.05)


def _to_plain(value: Any, full: bool) -> Any:
    import numpy as np
    if hasattr(value, '__msgtype__'):
        return {k: _to_plain(getattr(value, k), full) for k in value.__dataclass_fields__
                if not k.startswith('_')}
    if isinstance(value, np.ndarray):
        if full or value.size <= 16:
            return value.tolist()
        return f'<{value.size} x {value.dtype}: {value[:8].tolist()} ...>'
    if isinstance(value, (list, tuple)):
        items = value if full or len(value) <= 16 else value[:8]
        out = [_to_plain(v, full) for v in items]
        return out if len(items) == len(value) else out + [f'... ({len(value)} in all)']
    return value


def _list(args) -> int:
    with _session() as rt:
        time.sleep(max(0.0, args.wait))
        graph = rt.transport.graph()
        topics: dict[str, dict] = {}
        for e in graph:
            if e.topic is None:
                continue
            t = topics.setdefault(e.topic, {'types': set(), 'MP': 0, 'MS': 0})
            t['types'].add(e.msgtype)
            t[e.kind] = t.get(e.kind, 0) + 1
        for name in sorted(topics):
            t = topics[name]
            line = name
            if args.show_types or args.verbose:
                line += f" [{', '.join(sorted(t['types']))}]"
            if args.verbose:
                line += f" {t['MP']} publisher(s), {t['MS']} subscription(s)"
            print(line, flush=True)
        return 0


def _echo(args) -> int:
    import yaml
    limit = 1 if args.once else args.count
    seen = []

    def echo_callback(msg):
        seen.append(1)
        print(yaml.safe_dump(_to_plain(msg, args.full_arrays), sort_keys=False,
                             default_flow_style=None).rstrip(), flush=True)
        print('---', flush=True)

    with _session() as rt:
        _subscribe(rt, args, 'echo', echo_callback)
        end = None if args.timeout is None else time.monotonic() + args.timeout
        while not limit or len(seen) < limit:
            left = None if end is None else end - time.monotonic()
            if left is not None and left <= 0:
                break
            rt.spin_once(None, timeout_s=0.5 if left is None else min(left, 0.5))
        return 0


def _hz(args) -> int:
    stamps: list[float] = []
    reported = [0]

    def report_callback():
        window = stamps[-args.window:]
        if len(window) < 2 or len(stamps) == reported[0]:
            print('no new messages', flush=True)
            return
        reported[0] = len(stamps)
        gaps = [b - a for a, b in zip(window, window[1:])]
        mean = sum(gaps) / len(gaps)
        std = math.sqrt(sum((g - mean) ** 2 for g in gaps) / len(gaps))
        print(f'average rate: {1.0 / mean:.3f}\n\tmin: {min(gaps):.3f}s max: '
              f'{max(gaps):.3f}s std dev: {std:.5f}s window: {len(window)}', flush=True)

    with _session() as rt:
        node = _subscribe(rt, args, 'hz', lambda _msg: stamps.append(time.monotonic()))
        node.create_timer(1.0, report_callback)
        rt.spin(duration_s=args.duration)
        return 0


def main(args) -> int:
    verb = getattr(args, 'topic_command', None)
    if verb is None:
        args._topic_parser.print_help(sys.stderr)
        return 2
    return {'list': _list, 'echo': _echo, 'hz': _hz}[verb](args)
