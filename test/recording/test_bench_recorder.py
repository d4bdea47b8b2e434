"""`qail-ros bench recorder` in smoke mode: two processes, the JSON keys the issue asks for."""
import argparse
import json

import pytest


@pytest.mark.slow
def test_bench_recorder_smoke(capsys):
    pytest.importorskip('psutil')
    pytest.importorskip('zenoh')
    from qail_ros.bench import recorder
    parser = argparse.ArgumentParser()
    parser.add_argument('--json', action='store_true')
    recorder.add_arguments(parser)
    args = parser.parse_args(['--duration', '2', '--width', '64', '--height', '48', '--json',
                              '--report-period', '0'])
    code = recorder.main(args)
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    for key in ('published', 'recorded', 'dropped', 'recorder_cpu_percent', 'bag_bytes',
                'rate_hz', 'width', 'height'):
        assert key in result
    assert result['published'] == 60 and result['width'] == 64
    assert result['recorded'] + result['dropped'] == result['published']
    assert result['bag_bytes'] > result['recorded'] * 64 * 48 * 3
    assert result['recorder_exit_code'] == 0 and not result['bag_recovered']
    assert code == (0 if result['dropped'] == 0 else 1)
