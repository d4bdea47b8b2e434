"""`qail-ros topic hz` measures the rate of another session's topic (echo/list: test/runtime)."""
import re
import threading

import pytest

from qail_ros import messages as m
from qail_ros.runtime import Node
from qail_ros.runtime import zenoh_transport as zt

pytest.importorskip('zenoh', reason='eclipse-zenoh is not installed')


def test_topic_hz_reports_the_publish_rate(zenoh_endpoint, zenoh_runtime, capsys):
    from qail_ros.cli import build_parser, topic_cmd
    router = zt.ensure_router(zenoh_endpoint)
    try:
        node = Node('ticker', namespace='/demo')
        pub = node.create_publisher('std_msgs/msg/String', 'ticks', 10)
        node.create_timer(0.05, lambda: pub.publish(m.new('std_msgs/msg/String', data='t')))
        spinner = threading.Thread(target=zenoh_runtime.spin, args=([node],),
                                   kwargs={'duration_s': 8.0}, daemon=True)
        spinner.start()
        args = build_parser().parse_args(['topic', 'hz', 'demo/ticks', '--duration', '3.5'])
        assert topic_cmd.main(args) == 0
        rates = [float(r) for r in re.findall(r'average rate: ([\d.]+)', capsys.readouterr().out)]
        assert rates, 'no rate line printed'
        assert 8.0 < rates[-1] < 40.0       # published at 20 Hz; a loaded CI machine is slack
    finally:
        zenoh_runtime.shutdown()
        router.stop()
