"""use_sim_time on the embedded runtime: now() and timers follow /clock (runtime/clock.py)."""
from qail_ros import messages as m
from qail_ros.runtime import Node


class Ticker(Node):
    def __init__(self, **kwargs):
        super().__init__('ticker', **kwargs)
        self.ticks = []
        self.timer = self.create_timer(0.5, lambda: self.ticks.append(self.now_ns()))


class ClockSource(Node):
    def __init__(self, **kwargs):
        super().__init__('clock_source', **kwargs)
        self.pub = self.create_publisher('rosgraph_msgs/msg/Clock', '/clock', 10)

    def send(self, ns):
        self.pub.publish(m.new('rosgraph_msgs/msg/Clock', clock=m.time_from_ns(ns)))


def test_now_and_timers_follow_clock_with_use_sim_time(runtime):
    sim = Ticker(cli_args=['--ros-args', '-p', 'use_sim_time:=true'])
    wall = Ticker(cli_args=['--ros-args', '-r', '__node:=wall_ticker'])
    source = ClockSource()
    assert sim.now_ns() == 0                      # no /clock yet, as in ROS 2
    assert wall.now_ns() > 1_000_000_000_000_000_000
    for ns in (100_000_000_000, 100_200_000_000, 100_600_000_000, 100_700_000_000,
               102_000_000_000):
        source.send(ns)
        runtime.spin_until(lambda: sim.now_ns() == ns, timeout_s=5)
    # the timer started at the first /clock (100 s): due at 100.5 (fired at 100.6), 101.0
    # (fired at 102.0, which also passed 101.5 and 102.0: skipped, ROS 2 style)
    assert sim.ticks == [100_600_000_000, 102_000_000_000]
    assert sim.timer.skipped == 2
    assert sim.now().sec == 102
    assert wall.ticks == []                       # 0.5 s of wall time has not passed
    # time going back (a looping bag) restarts the timer's period from the new time
    source.send(50_000_000_000)
    runtime.spin_until(lambda: sim.now_ns() == 50_000_000_000, timeout_s=5)
    source.send(50_600_000_000)
    runtime.spin_until(lambda: len(sim.ticks) == 3, timeout_s=5)
    assert sim.ticks[-1] == 50_600_000_000
