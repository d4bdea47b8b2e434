"""`qail-ros bag play BAG`: publish a bag's messages at their recorded pace, like `ros2 bag play`.

    qail-ros bag play runs/bags/episode_0000 --clock --rate 2 --topics /state /image_raw
    qail-ros launch physics_drive ... use_sim_time:=true     # nodes then run on the bag's time

    qail-ros bag play       ros2 bag play           meaning
    --rate R                -r / --rate R           playback speed factor
    --clock [HZ]            --clock [HZ]            /clock from bag time at HZ (default 40),
                            (+ --clock-topics-all)  and before every message
    --loop                  -l / --loop             start again at the end
    --topics T ...          --topics T ...          only these topics
    --start S               --start-offset S        start S seconds into the bag
    --delay S               -d / --delay S          wait S seconds before the first message
    --duration S            (none)                  stop after S wall seconds

Each topic is published with the QoS it was recorded with (its first offered profile:
reliability, durability, history and depth; depth 0 becomes 10), as rosbag2's player does.
Messages are decoded with the bag's own definitions and published as messages (the embedded
runtime) or as CDR bytes (rclpy). The player is a node (`rosbag2_player`), so `--ros-args -r`
remapping works; it runs on the active runtime (embedded by default, rclpy where selected).
"""
from __future__ import annotations

import time
from pathlib import Path
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from qail_ros.errors import ParameterError
from qail_ros.runtime import Node

if TYPE_CHECKING:
    from qail_ros.bag.reader import BagMessage

__all__ = ['BagPlayer', 'add_play_arguments', 'play_main', 'recorded_qos']

DEFAULT_CLOCK_HZ = 40.0


def recorded_qos(profiles: list) -> Any:
    """qail_ros QoS of a topic's first recorded offered profile (the default if none)."""
    from qail_ros.runtime.api import QoS
    if not profiles:
        return QoS()
    q = profiles[0]
    name = lambda v: getattr(v, 'name', str(v)).lower()   # noqa: E731
    depth = int(getattr(q, 'depth', 10) or 10)
    return QoS(depth=depth,
               reliability='best_effort' if name(q.reliability) == 'best_effort'
               else 'reliable',
               durability='transient_local' if name(q.durability) == 'transient_local'
               else 'volatile',
               history='keep_all' if name(q.history) == 'keep_all' else 'keep_last')


class BagPlayer(Node):
    """Publishes a bag; a node (see the module docstring for the options)."""

    def __init__(self, bag: str | Path, rate: float = 1.0, clock_hz: float | None = None,
                 loop: bool = False, topics: list[str] | None = None, start_s: float = 0.0,
                 duration_s: float | None = None, delay_s: float = 0.0,
                 shutdown_when_done: bool = True, **kwargs):
        super().__init__('rosbag2_player', **kwargs)
        self._sim_clock = None       # the player runs on the wall clock, whatever it is given
        from qail_ros.bag import BagReader
        if rate <= 0:
            raise ParameterError(f'--rate must be > 0, not {rate}')
        if clock_hz is not None and clock_hz < 0:
            raise ParameterError(f'--clock must be >= 0 Hz, not {clock_hz}')
        self.reader = BagReader(bag)
        self.rate = float(rate)
        self.clock_hz = clock_hz
        self.loop = loop
        self.start_s = float(start_s)
        self.duration_s = duration_s
        self.delay_s = float(delay_s)
        self.shutdown_when_done = shutdown_when_done
        info = self.reader.topics
        wanted = list(topics) if topics else list(info)
        unknown = [t for t in wanted if t not in info]
        if unknown:
            raise ParameterError(f'topic(s) {unknown} are not in the bag; it has '
                                 f'{sorted(info)}')
        self.topics = wanted
        self.publishers: dict[str, Any] = {}
        for topic in wanted:
            self.publishers[topic] = self.create_publisher(info[topic].msgtype, topic,
                                                           recorded_qos(info[topic].qos))
        self.clock_pub = (self.create_publisher('rosgraph_msgs/msg/Clock', '/clock', 10)
                          if clock_hz is not None else None)
        # rclpy publishes CDR bytes as they are; the embedded runtime passes messages
        self.raw = self.runtime.name != 'embedded'
        self.published = 0
        self.loops = 0
        self.done = False
        self._it: Iterator[BagMessage] | None = None
        self._pending: BagMessage | None = None
        self._t0 = 0.0                  # wall time of the first message, set by _restart
        self._bag0 = 0
        self._last_clock_wall = 0.0
        self._bag_now = 0
        self._started_wall: float | None = None
        self.timer = None

    # -- lifecycle ------------------------------------------------------------------------
    def on_activate(self) -> None:
        self._started_wall = time.monotonic()
        self.timer = self.create_timer(0.001, self.timer_callback)

    def on_cleanup(self) -> None:
        self.reader.close()

    # -- playback -------------------------------------------------------------------------
    def _restart(self) -> None:
        start_ns = self.reader.start_ns + int(self.start_s * 1e9)
        self._it = (m for m in self.reader.messages(self.topics, raw=self.raw)
                    if m.timestamp_ns >= start_ns)
        self._pending = next(self._it, None)
        self._bag0 = start_ns
        self._t0 = time.monotonic() + (self.delay_s if self.loops == 0 else 0.0)

    def _publish_clock(self, bag_ns: int) -> None:
        from qail_ros import messages as m
        if self.clock_pub is not None:
            self.clock_pub.publish(m.new('rosgraph_msgs/msg/Clock', clock=m.time_from_ns(bag_ns)))
        self._last_clock_wall = time.monotonic()

    def timer_callback(self) -> None:
        if self.done:
            return
        if self._it is None:
            self._restart()
        now = time.monotonic()
        if (self.duration_s is not None and self._started_wall is not None
                and now - self._started_wall >= self.duration_s):
            return self._finish()
        while self._pending is not None:
            topic, stamp, msg = self._pending
            due = self._t0 + (stamp - self._bag0) / 1e9 / self.rate
            if due > now:
                break
            if self.clock_pub is not None:
                self._publish_clock(stamp)
            self.publishers[topic].publish(msg)
            self._bag_now = stamp
            self.published += 1
            self._pending = next(self._it, None) if self._it is not None else None
        if self._pending is None:
            if self.loop and self.published:
                self.loops += 1
                self._restart()
                return
            return self._finish()
        if self.clock_pub is not None and self.clock_hz and \
                now - self._last_clock_wall >= 1.0 / self.clock_hz and now >= self._t0:
            bag_ns = self._bag0 + int((now - self._t0) * self.rate * 1e9)
            self._publish_clock(max(bag_ns, self._bag_now))

    def _finish(self) -> None:
        self.done = True
        if self.timer is not None:
            self.timer.cancel()
        self.get_logger().info(f'played {self.published} messages'
                               + (f' ({self.loops} loops)' if self.loops else ''))
        if self.shutdown_when_done:
            self.request_shutdown()


def add_play_arguments(parser) -> None:
    parser.add_argument('path', help='bag directory, .mcap, .db3 or ROS 1 .bag')
    parser.add_argument('--rate', type=float, default=1.0, help='speed factor (default 1)')
    parser.add_argument('--clock', type=float, nargs='?', const=DEFAULT_CLOCK_HZ, default=None,
                        metavar='HZ', help='publish /clock from bag time, at HZ (default 40) '
                                           'and before every message')
    parser.add_argument('--loop', action='store_true', help='start again at the end')
    parser.add_argument('--topics', nargs='+', default=None, help='only these topics')
    parser.add_argument('--start', type=float, default=0.0, metavar='S',
                        help='start S seconds into the bag (ros2: --start-offset)')
    parser.add_argument('--delay', type=float, default=0.0, metavar='S',
                        help='wait S seconds before the first message')
    parser.add_argument('--duration', type=float, default=None, metavar='S',
                        help='stop after S seconds')
    parser.add_argument('--ros-args', dest='ros_args', nargs='...', default=[],
                        help='ROS arguments (remapping) for the player node')


def play_main(args) -> int:
    from qail_ros.runtime.node import nodes_main

    def factory(cli_args=None):
        return BagPlayer(args.path, rate=args.rate, clock_hz=args.clock, loop=args.loop,
                         topics=args.topics, start_s=args.start, duration_s=args.duration,
                         delay_s=args.delay, cli_args=cli_args)

    argv = ['qail-ros-bag-play'] + (['--ros-args'] + args.ros_args if args.ros_args else [])
    return nodes_main([factory], argv)
