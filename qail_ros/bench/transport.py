"""`qail-ros bench transport`: camera-sized images through the embedded runtime.

A publisher sends `sensor_msgs/msg/Image` (rgb8, WIDTHxHEIGHT) at RATE Hz for DURATION s and a
subscriber measures one-way latency = receipt time - header.stamp (both `time.time_ns()` on
the same machine, so the same clock). Each image carries its sequence number in
`header.frame_id`, so losses and reordering are counted exactly.

* `--mode processes`: publisher and subscriber in two processes, over Zenoh (rmw_zenoh layout,
  CDR payload); the benchmark starts a private router on a free port (or uses `--router`).
* `--mode composed`: both nodes in one process: the intra-process path, no serialisation.

The first `--warmup` seconds of images are sent but not counted.
"""
from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

HELP = 'images publisher -> subscriber latency and loss, two processes (Zenoh) or composed'

_IMAGE = 'sensor_msgs/msg/Image'
_WARMUP_ID = 'warmup'
#: the publisher process of --mode processes (`python -c _PUBLISHER CONFIG_JSON`)
_PUBLISHER = ('import json, sys; from qail_ros.bench.transport import publisher_role; '
              'sys.exit(publisher_role(json.loads(sys.argv[1])))')


def add_arguments(parser) -> None:
    parser.add_argument('--mode', choices=('processes', 'composed'), default='processes',
                        help='two processes over Zenoh, or one process (intra-process)')
    parser.add_argument('--duration', type=float, default=60.0, help='seconds measured')
    parser.add_argument('--rate', type=float, default=30.0, help='images per second')
    parser.add_argument('--width', type=int, default=640)
    parser.add_argument('--height', type=int, default=480)
    parser.add_argument('--depth', type=int, default=10, help='QoS keep_last depth')
    parser.add_argument('--warmup', type=float, default=1.0,
                        help='seconds of images sent first and not counted')
    parser.add_argument('--router', default=None, metavar='ENDPOINT',
                        help='use this Zenoh router instead of starting a private one')


# -- the two nodes ------------------------------------------------------------------------
def _make_nodes(runtime, cfg: dict, publisher: bool, subscriber: bool):
    import numpy as np

    from qail_ros import messages as m
    from qail_ros.runtime import Node, QoS

    qos = QoS(depth=cfg['depth'])

    class ImagePublisher(Node):
        """Publishes warm-up images, then `count` numbered ones, at `rate` Hz."""

        def __init__(self):
            super().__init__('bench_image_publisher', runtime=runtime)
            self.pub = self.create_publisher(_IMAGE, 'bench/image', qos)
            w, h = cfg['width'], cfg['height']
            self.data = (np.arange(w * h * 3, dtype=np.uint32) % 251).astype(np.uint8)
            self.warmup = int(round(cfg['warmup'] * cfg['rate']))
            self.count = int(round(cfg['duration'] * cfg['rate']))
            self.sent = 0
            self.ticks = 0
            self.timer = None

        def start(self):
            self.timer = self.create_timer(1.0 / cfg['rate'], self.timer_callback)

        def done(self) -> bool:
            return self.sent >= self.count

        def timer_callback(self):
            if self.done():
                self.timer.cancel()
                return
            warm = self.ticks < self.warmup
            self.ticks += 1
            self.data[0] = self.ticks % 256  # a different image each time
            msg = m.new(_IMAGE, height=cfg['height'], width=cfg['width'], encoding='rgb8',
                        step=cfg['width'] * 3, data=self.data)
            msg.header.frame_id = _WARMUP_ID if warm else str(self.sent)
            msg.header.stamp = self.now()
            self.pub.publish(msg)
            if not warm:
                self.sent += 1

    class ImageSubscriber(Node):
        """Records latency and the sequence number of each counted image."""

        def __init__(self):
            super().__init__('bench_image_subscriber', runtime=runtime)
            self.latency_ns: list[int] = []
            self.seen: set[int] = set()
            self.out_of_order = 0
            self.last = -1
            self.warm = 0
            self.bad = 0
            self.sub = self.create_subscription(_IMAGE, 'bench/image', self.image_callback, qos)

        def image_callback(self, msg):
            now = time.time_ns()
            if msg.header.frame_id == _WARMUP_ID:
                self.warm += 1
                return
            if len(msg.data) != cfg['width'] * cfg['height'] * 3:
                self.bad += 1
            seq = int(msg.header.frame_id)
            self.latency_ns.append(now - m.ns_from_time(msg.header.stamp))
            if seq <= self.last:
                self.out_of_order += 1
            self.last = max(self.last, seq)
            self.seen.add(seq)

    return (ImagePublisher() if publisher else None,
            ImageSubscriber() if subscriber else None)


# -- roles --------------------------------------------------------------------------------
@contextlib.contextmanager
def _session() -> Iterator[Any]:
    """The embedded runtime with the Zenoh transport, shut down at the end."""
    from qail_ros.runtime import set_runtime
    from qail_ros.runtime.embedded import EmbeddedRuntime
    rt = EmbeddedRuntime(transport='zenoh')
    set_runtime(rt)
    rt.init([])
    try:
        yield rt
    finally:
        rt.shutdown()


def _publish(rt, pub_node, cfg: dict) -> None:
    """Publish the warm-up and the measured images; return when the last one is out."""
    pub_node.start()
    rt.spin_until(pub_node.done, timeout_s=cfg['warmup'] + cfg['duration'] + 30)


def publisher_role(cfg: dict) -> int:
    """Child process of --mode processes: wait for the subscriber, publish, report."""
    with _session() as rt:
        pub_node, _ = _make_nodes(rt, cfg, publisher=True, subscriber=False)
        pub = pub_node.pub
        if not rt.spin_until(lambda: pub.get_subscription_count() >= 1 and pub.remote
                             and pub.remote.matching, timeout_s=20.0):
            print(json.dumps({'error': 'the subscriber process never matched'}), flush=True)
            return 1
        _publish(rt, pub_node, cfg)
        rt.spin(duration_s=0.3)  # let the last image leave before the session closes
        print(json.dumps({'sent': pub_node.sent, 'serialized': pub.remote.serialized}),
              flush=True)
        return 0


def _run_composed(cfg: dict) -> dict:
    """Both nodes in this process, the Zenoh transport on as in a composed launch."""
    from qail_ros.runtime import zenoh_transport as zt
    with zt.private_router(cfg['router']), _session() as rt:
        pub_node, sub_node = _make_nodes(rt, cfg, publisher=True, subscriber=True)
        _publish(rt, pub_node, cfg)
        rt.spin_until(lambda: len(sub_node.seen) >= pub_node.sent, timeout_s=2.0)
        return _result(cfg, pub_node.sent, sub_node,
                       serialized=pub_node.pub.remote.serialized if pub_node.pub.remote else 0)


def _run_processes(cfg: dict) -> dict:
    """Publisher in a child process, subscriber here, over Zenoh through a private router."""
    from qail_ros.runtime import zenoh_transport as zt
    with zt.private_router(cfg['router']), _session() as rt:
        return _processes(rt, cfg)


def _processes(rt, cfg: dict) -> dict:
    from qail_ros.errors import TransportError
    child = None
    try:
        _, sub_node = _make_nodes(rt, cfg, publisher=False, subscriber=True)
        root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        env = dict(os.environ)
        env['PYTHONPATH'] = os.pathsep.join(p for p in (root, env.get('PYTHONPATH')) if p)
        child = subprocess.Popen(
            [sys.executable, '-c', _PUBLISHER, json.dumps(cfg)],
            env=env, stdout=subprocess.PIPE, text=True)
        limit = time.monotonic() + cfg['warmup'] + cfg['duration'] + 60
        while child.poll() is None and time.monotonic() < limit:
            rt.spin(duration_s=0.2)
        if child.poll() is None:
            child.kill()
        out = child.communicate()[0].strip().splitlines()
        report = json.loads(out[-1]) if out else {}
        if 'sent' not in report:
            raise TransportError(f"the publisher process failed: {report.get('error', out)}")
        rt.spin_until(lambda: len(sub_node.seen) >= report['sent'], timeout_s=2.0)
        return _result(cfg, report['sent'], sub_node, serialized=report['serialized'])
    finally:
        if child is not None and child.poll() is None:
            child.kill()
            child.wait()


def _result(cfg: dict, sent: int, sub_node, serialized: int) -> dict:
    import numpy as np
    lat = np.asarray(sub_node.latency_ns, dtype=np.float64) / 1e6
    received = len(sub_node.seen)

    def pct(q):
        return round(float(np.percentile(lat, q)), 4) if lat.size else None

    return {
        'bench': 'transport', 'mode': cfg['mode'],
        'messages_sent': sent, 'messages_received': received, 'lost': sent - received,
        'p50_ms': pct(50), 'p90_ms': pct(90), 'p99_ms': pct(99),
        'max_ms': round(float(lat.max()), 4) if lat.size else None,
        'mean_ms': round(float(lat.mean()), 4) if lat.size else None,
        'rate_hz': cfg['rate'], 'width': cfg['width'], 'height': cfg['height'],
        'duration_s': cfg['duration'], 'payload_bytes': cfg['width'] * cfg['height'] * 3,
        'qos_depth': cfg['depth'], 'queue_drops': sub_node.sub.dropped,
        'out_of_order': sub_node.out_of_order, 'bad_images': sub_node.bad,
        'serialized_by_publisher': serialized,
    }


def main(args) -> int:
    from qail_ros import report
    cfg = {'mode': args.mode, 'duration': float(args.duration), 'rate': float(args.rate),
           'width': int(args.width), 'height': int(args.height), 'depth': int(args.depth),
           'warmup': float(args.warmup), 'router': args.router}
    if cfg['rate'] <= 0 or cfg['duration'] <= 0 or cfg['width'] <= 0 or cfg['height'] <= 0:
        raise SystemExit('bench transport: --rate, --duration, --width and --height must be > 0')
    res = _run_composed(cfg) if cfg['mode'] == 'composed' else _run_processes(cfg)
    res.update(report.environment())
    report.table(
        f"transport ({res['mode']}): {res['width']}x{res['height']} rgb8 "
        f"({res['payload_bytes'] / 1e3:.0f} kB) at {res['rate_hz']:g} Hz for "
        f"{res['duration_s']:g} s",
        ['sent', 'received', 'lost', 'p50 ms', 'p90 ms', 'p99 ms', 'max ms', 'queue drops',
         'serialised'],
        [[res['messages_sent'], res['messages_received'], res['lost'], res['p50_ms'],
          res['p90_ms'], res['p99_ms'], res['max_ms'], res['queue_drops'],
          res['serialized_by_publisher']]])
    if getattr(args, 'json', False):
        report.emit_json(res)
    return 0 if res['lost'] == 0 else 1
