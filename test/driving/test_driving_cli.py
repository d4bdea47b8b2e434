"""`qail-ros driving eval|measure`: the driving tools as qail-ros subcommands (they used to be
`python -m` module command lines)."""
import json
from pathlib import Path

import pytest

from qail_ros.cli import main

pytest.importorskip('highway_env', reason='the driving tools need highway-env')

ENGINE = (Path(__file__).resolve().parents[2] / 'models' / 'cilrs-highway'
          / 'cilrs_highway_fp32_torch.safetensors')


def test_driving_without_an_action_prints_help(capsys):
    assert main(['driving']) == 2
    assert 'eval' in capsys.readouterr().out


@pytest.mark.skipif(not ENGINE.is_file(), reason='models/cilrs-highway is not there')
def test_eval_drives_routes_with_an_engine_and_prints_json_last(capsys):
    pytest.importorskip('torch', reason='the fp32 engine is torch')
    assert main(['driving', 'eval', str(ENGINE), '--routes', '1', '--density', 'empty',
                 '--json']) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    m = json.loads(lines[-1])
    assert m['episodes'] == 1 and 0.0 <= m['route_completion'] <= 1.0
    assert lines[0].startswith('seed 0: ' + m['episodes_detail'][0]['outcome'])
    assert 'highway/empty, 1 routes' in lines[-2]


def test_measure_writes_the_json_it_prints(tmp_path, capsys):
    out = tmp_path / 'm.json'
    assert main(['driving', 'measure', '--routes', '1', '--towns', 'highway', '--densities',
                 'empty', '--baselines', 'zero', '--camera', '32', '16', '--json',
                 str(out)]) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed == json.loads(out.read_text())
    assert set(printed) == {'expert/highway/empty', 'zero/highway/regular', 'camera_steps_per_s'}
    assert printed['camera_steps_per_s']['image_size'] == [32, 16]
    assert printed['expert/highway/empty']['episodes'] == 1
