"""`qail-ros bench transport`, `qail-ros topic` and `qail-ros router` (short runs)."""
import argparse
import json
import os
import signal
import subprocess
import sys
import threading

import pytest

from qail_ros import messages as m
from qail_ros.runtime import Node
from qail_ros.runtime import zenoh_transport as zt

pytest.importorskip('zenoh', reason='eclipse-zenoh is not installed')
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _parse(module, argv):
    parser = argparse.ArgumentParser()
    parser.add_argument('--json', action='store_true')
    module.add_arguments(parser)
    return parser.parse_args(argv)


@pytest.mark.parametrize('mode', ['composed', 'processes'])
def test_bench_transport_counts_every_image(mode, zenoh_endpoint, capsys):
    from qail_ros.bench import transport
    args = _parse(transport, ['--mode', mode, '--duration', '0.5', '--rate', '20',
                              '--width', '64', '--height', '48', '--warmup', '0.1', '--json'])
    code = transport.main(args)
    out = capsys.readouterr().out.strip().splitlines()
    result = json.loads(out[-1])
    assert result['mode'] == mode and code == 0
    assert result['messages_sent'] == 10
    assert result['messages_received'] == 10 and result['lost'] == 0
    assert result['p50_ms'] is not None and result['p99_ms'] >= result['p50_ms']
    assert {'rate_hz', 'width', 'height', 'duration_s', 'max_ms'} <= set(result)
    if mode == 'composed':
        assert result['serialized_by_publisher'] == 0   # intra-process: no CDR
    else:
        assert result['serialized_by_publisher'] >= 10  # warm-up images + counted ones
    assert 'transport (' + mode in '\n'.join(out)


def test_topic_list_and_echo_see_another_session(zenoh_endpoint, zenoh_runtime, capsys):
    from qail_ros.cli import topic_cmd
    router = zt.ensure_router(zenoh_endpoint)
    try:
        node = Node('speaker', namespace='/demo')
        pub = node.create_publisher('std_msgs/msg/String', 'words', 10)
        node.create_timer(0.02, lambda: pub.publish(m.new('std_msgs/msg/String', data='hey')))
        spinner = threading.Thread(target=zenoh_runtime.spin, args=([node],),
                                   kwargs={'duration_s': 8.0}, daemon=True)
        spinner.start()
        assert topic_cmd.main(_parse(topic_cmd, ['list', '-v', '--wait', '0.5'])) == 0
        listed = capsys.readouterr().out
        assert '/demo/words [std_msgs/msg/String] 1 publisher(s)' in listed
        assert topic_cmd.main(_parse(topic_cmd, ['echo', '/demo/words', '--once',
                                                 '--timeout', '5'])) == 0
        assert 'data: hey' in capsys.readouterr().out
    finally:
        zenoh_runtime.shutdown()
        router.stop()


def test_topic_without_router_explains_the_fix(zenoh_endpoint):
    from qail_ros.cli import topic_cmd
    from qail_ros.errors import TransportError
    with pytest.raises(TransportError, match='qail-ros router'):
        topic_cmd.main(_parse(topic_cmd, ['list']))


def test_router_command_runs_and_stops_on_sigterm(zenoh_endpoint):
    env = dict(os.environ, PYTHONPATH=ROOT)
    proc = subprocess.Popen(
        [sys.executable, '-c', 'import sys; from qail_ros.cli import main; sys.exit(main())',
         'router', '--listen', zenoh_endpoint], env=env, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stderr.readline()
        assert 'listening on ' + zenoh_endpoint in line
        assert zt.router_reachable(zenoh_endpoint)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(5) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
