"""`qail-ros replay`: engines over a recorded bag, compared with the recorded actions and with
each other."""
import json
from pathlib import Path

import numpy as np
import pytest

from qail_ros import image as im
from qail_ros import messages as m
from qail_ros import policy_io
from qail_ros.bag import BagWriter
from qail_ros.cli import main

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / 'models' / 'openvla-tiny'


@pytest.fixture(scope='module')
def fp_engine(tmp_path_factory):
    pytest.importorskip('torch')
    from qail_ros.physics.export import export_policy
    from qail_ros.physics.models import task_dir
    out = tmp_path_factory.mktemp('engines')
    engine, _ = export_policy(task_dir('cartpole-balance') / 'fp_policy.safetensors', out,
                              name='fp32')
    return engine


def test_replay_state_engines_report_error_agreement_latency_and_plot(
        tmp_path, fp_engine, capsys):
    from qail_ros.engines import load_engine
    engine = load_engine(fp_engine)
    rng = np.random.default_rng(0)
    offset = np.array([0.1])
    with BagWriter(tmp_path / 'ep', flush_interval_s=0) as bag:
        for i in range(20):
            stamp = 1_000_000_000 + i * 5_000_000
            state = rng.standard_normal(5)
            act = engine.infer({'state': state[None].astype(np.float32)})['action'][0]
            bag.write('/state', policy_io.raw_outputs_to_msg(stamp, state, 'state'), stamp)
            if i % 4:              # a recorded action a quarter of the time is missing
                bag.write('/action', policy_io.raw_outputs_to_msg(
                    stamp, act.astype(np.float64) + offset, 'action'), stamp + 1000)
    (tmp_path / 'map.yaml').write_text('state: /state\naction: /action\n')
    png = tmp_path / 'replay.png'
    assert main(['replay', str(fp_engine), str(fp_engine), '--bag', str(tmp_path / 'ep'),
                 '--topic-map', str(tmp_path / 'map.yaml'), '--json', '--plot', str(png)]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report['inputs'] == 20 and report['paired_with_recorded'] == 15
    assert report['unpaired'] == 5
    for e in report['engines']:
        err = e['error_vs_recorded']
        assert err['mean'] == pytest.approx([0.1], abs=1e-6)
        assert err['max_all'] == pytest.approx(0.1, abs=1e-6)
        assert e['latency_ms']['mean'] > 0
    assert report['agreement'][0]['abs_diff_max'] == [0.0]
    assert png.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
    assert main(['replay', str(fp_engine), '--bag', str(tmp_path / 'ep'), '--topic-map',
                 str(tmp_path / 'map.yaml')]) == 0
    table = capsys.readouterr().out
    assert '| fp32 (fp32, torch) | 0.1000 | 0.1000 |' in table


def test_replay_names_a_topic_of_the_wrong_type(tmp_path, fp_engine, capsys):
    with BagWriter(tmp_path / 'b', flush_interval_s=0) as bag:
        bag.write('/state', m.new('std_msgs/msg/String', data='x'), 1)
        bag.write('/action', m.new('std_msgs/msg/Float64', data=1.0), 1)
    (tmp_path / 'map.yaml').write_text('state: /state\naction: /action\n')
    assert main(['replay', str(fp_engine), '--bag', str(tmp_path / 'b'), '--topic-map',
                 str(tmp_path / 'map.yaml')]) == 2
    assert "topic '/state' is std_msgs/msg/String" in capsys.readouterr().err


@pytest.mark.skipif(not TINY.exists(), reason='models/openvla-tiny is not there')
def test_replay_openvla_fp32_and_int4_compares_action_tokens(tmp_path, capsys):
    pytest.importorskip('transformers')
    from qail_ros.openvla.policy import OpenVLAPolicy
    policy = OpenVLAPolicy.from_pretrained(TINY, unnorm_key='bridge_orig')
    rng = np.random.default_rng(1)
    with BagWriter(tmp_path / 'vla', flush_interval_s=0) as bag:
        for i in range(3):
            stamp = 2_000_000_000 + i * 500_000_000
            frame = rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)
            bag.write('/image_raw', im.from_numpy(frame, 'rgb8', stamp=m.time_from_ns(stamp)),
                      stamp)
            act = policy.predict(frame, 'pick up the red block').action
            bag.write('/action', m.new('std_msgs/msg/Float32MultiArray',
                                       data=act.astype(np.float32)), stamp + 20_000_000)
    (tmp_path / 'map.yaml').write_text('image: /image_raw\naction: /action\ninstruction_text: '
                                       'pick up the red block\nstamp_tolerance_ms: 100\n')
    assert main(['replay', f'openvla:{TINY}@fp32', f'openvla:{TINY}@int4', '--bag',
                 str(tmp_path / 'vla'), '--topic-map', str(tmp_path / 'map.yaml'),
                 '--json']) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report['paired_with_recorded'] == 3
    fp, int4 = report['engines']
    assert fp['error_vs_recorded']['max_all'] < 1e-5        # the recorder's own model
    assert len(int4['error_vs_recorded']['mean']) == 7
    agree = report['agreement'][0]
    assert 0.0 <= agree['identical_tokens'] <= 1.0
    assert agree['identical_tokens'] == 1.0 or int4['error_vs_recorded']['max_all'] > 0
