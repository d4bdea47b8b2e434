"""power_monitor end to end on the embedded runtime, in one process: a replayed tegrastats log
and policy_timing messages in, /diagnostics and ~/metrics out, with the energy numbers of
test/monitor/test_energy.py; and the no-power-source case on this machine."""
import json
import math
import os
import time

import pytest

from qail_ros import policy_io
from qail_ros.errors import ParameterError
from qail_ros.monitor.sources import LogReplay
from qail_ros.nodes.power_monitor import PowerMonitor
from qail_ros.runtime import Node

DATA = os.path.join(os.path.dirname(__file__), '..', 'monitor', 'data')
REPLAY = os.path.join(DATA, 'orin_nx_replay.log')
TOPIC = '/policy_a/policy_timing'


class Listener(Node):
    def __init__(self, **kwargs):
        super().__init__('listener', **kwargs)
        self.diagnostics, self.metrics = [], []
        self.create_subscription('diagnostic_msgs/msg/DiagnosticArray', '/diagnostics',
                                 self.diagnostics.append, 10)
        self.create_subscription('std_msgs/msg/Float64MultiArray', '/power_monitor/metrics',
                                 self.metrics.append, 10)


def monitor(*params):
    args = ['--ros-args']
    for p in params:
        args += ['-p', p]
    return PowerMonitor(cli_args=args)


def statuses(diag):
    return {s.name: (s.level, s.message, {kv.key: kv.value for kv in s.values})
            for s in diag.status}


def timing(start_s, end_s):
    return policy_io.timing_to_msg(policy_io.InferenceTiming(
        stamp_ns=int(start_s * 1e9) - 5_000_000, start_s=start_s, end_s=end_s,
        inference_ms=(end_s - start_s) * 1e3))


def test_replayed_log_and_timing_messages_give_hand_checked_energy(rt, tmp_path):
    record = tmp_path / 'session.jsonl'
    mon = monitor('source:=replay', f'logfile:={REPLAY}', 'publish_period_s:=0.05',
                  f'timing_topics:=[{TOPIC},/policy_b/policy_timing]', f'record_path:={record}',
                  'session_label:=fp32', 'hardware_id:=orin-test')
    # the replay is driven deterministically: samples every 125 ms from t = 1000 s
    mon.on_configure()
    mon.source = LogReplay(REPLAY, interval_ms=125, time_scale=1e4, timebase='log',
                           start_time=1000.0)
    fake = Node('policy_a')
    pub = fake.create_publisher('std_msgs/msg/Float64MultiArray', '~/policy_timing', 10)
    listener = Listener()
    mon.on_activate()
    pub.publish(timing(1000.1875, 1000.3125))
    pub.publish(timing(1000.375, 1000.5))
    assert rt.spin_until(lambda: mon.readings >= 8 and len(listener.diagnostics) >= 2, 10.0)
    rt.spin([mon, listener, fake], duration_s=0.12)
    mon.on_deactivate()
    mon.on_cleanup()

    st = statuses(listener.diagnostics[-1])
    assert set(st) == {'power_monitor: source', 'power_monitor: power',
                       'power_monitor: thermal', f'power_monitor: policy {TOPIC}',
                       'power_monitor: policy /policy_b/policy_timing'}
    level, msg, values = st[f'power_monitor: policy {TOPIC}']
    assert level == 0 and 'J/inference' in msg
    assert values['inferences (total)'] == '2'
    assert float(values['energy per inference (J)']) == pytest.approx(1.0859375, abs=1e-5)
    dynamic = float(values['dynamic energy per inference (J)'])
    assert dynamic == pytest.approx(0.5859375, abs=1e-5)
    assert float(values['mean power during inference (W)']) == pytest.approx(8.6875, abs=1e-3)
    assert float(values['idle baseline (W)']) == pytest.approx(4.0)
    assert float(values['latency p50 (ms)']) == pytest.approx(125.0, abs=1e-3)
    assert st['power_monitor: policy /policy_b/policy_timing'][0] == 3   # STALE: no messages
    level, msg, values = st['power_monitor: source']
    assert level == 0 and values['power measured'] == 'true' and values['samples'] == '8'
    level, msg, values = st['power_monitor: power']
    assert msg == '4.00 W'                                               # last line: 4 W
    assert values['VDD_IN power (W)'] == '4.000'                         # watts, not mA
    assert values['VDD_CPU_GPU_CV power (W)'] == '1.000'
    assert values['power (W) [VDD_IN]'] == '4.000'
    assert all(not k.endswith('(mA)') for k in values)
    level, msg, values = st['power_monitor: thermal']
    assert level == 0 and values['throttling'] == 'false' and values['tj (C)'] == '51.56'
    assert all(s.hardware_id == 'orin-test' for s in listener.diagnostics[-1].status)

    m = policy_io.values_by_label(listener.metrics[-1])
    assert m['power_w'] == 4.0 and m['baseline_w'] == pytest.approx(4.0)
    assert m['rail.VDD_SOC.power_w'] == 1.5 and m['throttling'] == 0.0
    assert m[f'{TOPIC}.energy_j'] == pytest.approx(1.0859375)
    assert m[f'{TOPIC}.inferences'] == 2.0
    assert math.isnan(m['/policy_b/policy_timing.latency_p50_ms'])

    lines = [json.loads(x) for x in record.read_text().splitlines()]
    assert lines[0]['kind'] == 'meta' and lines[0]['label'] == 'fp32'
    assert sum(x['kind'] == 'inference' for x in lines) == 2
    assert sum(x['kind'] == 'reading' for x in lines) == 8


def test_no_power_source_says_so_and_still_reports_latency(rt, monkeypatch, tmp_path):
    monkeypatch.setenv('PATH', str(tmp_path))                 # no tegrastats here
    mon = monitor('source:=proc', 'publish_period_s:=0.05', f'timing_topics:=[{TOPIC}]')
    mon.on_configure()
    fake = Node('policy_a')
    pub = fake.create_publisher('std_msgs/msg/Float64MultiArray', '~/policy_timing', 10)
    listener = Listener()
    mon.on_activate()
    now = time.time()
    for i in range(5):
        pub.publish(timing(now + i * 0.05, now + i * 0.05 + 0.01 * (i + 1)))
    assert rt.spin_until(lambda: len(listener.diagnostics) >= 2 and mon.readings >= 1, 10.0)
    mon.on_deactivate()
    st = statuses(listener.diagnostics[-1])
    level, msg, values = st['power_monitor: source']
    assert level == 1 and msg == 'no power source available: latency only'
    assert values['power measured'] == 'false'
    level, msg, values = st[f'power_monitor: policy {TOPIC}']
    assert level == 0 and 'energy n/a' in msg
    assert float(values['latency p50 (ms)']) == pytest.approx(30.0, abs=1e-3)
    assert values['energy per inference (J)'] == 'nan'
    assert st['power_monitor: power'][1] == 'power not measured'


def test_legacy_latency_only_timing_is_accepted(rt):
    mon = monitor('source:=proc', f'timing_topics:=[{TOPIC}]',
                  'timing_msg_type:=std_msgs/msg/Float32MultiArray')
    mon.on_configure()
    mon.timing_callback(TOPIC, policy_io.labelled_values(['latency_ms', 'inference_ms'],
                                                         [12.0, 10.0]))
    mon.timing_callback(TOPIC, policy_io.labelled_values(['foo'], [1.0]))
    st = mon.snapshot()['stats'][TOPIC]
    assert st.total == 1 and st.latency_p50_ms == pytest.approx(12.0, abs=1e-3)
    assert mon.bad_timing == 1


def test_bad_parameters_name_the_fix(rt):
    with pytest.raises(ParameterError, match='interval_ms must be > 0'):
        monitor('interval_ms:=0')
    with pytest.raises(ParameterError, match="needs logfile:=PATH"):
        monitor('source:=replay')
    mon = monitor('source:=logfile', 'logfile:=/nonexistent.log')
    with pytest.raises(ParameterError, match='does not exist'):
        mon.on_configure()


def test_thermal_throttling_flag_reaches_diagnostics(rt, tmp_path):
    hot = tmp_path / 'hot.log'
    hot.write_text('RAM 1/2MB CPU [90%@1984] GR3D_FREQ 99%@[1300] tj@97.5C gpu@97C '
                   'VDD_IN 20000mW/20000mW\n')
    mon = monitor('source:=replay', f'logfile:={hot}', 'replay_time_scale:=100.0')
    mon.on_configure()
    mon.on_activate()
    assert rt.spin_until(lambda: mon.readings >= 1, 5.0)
    diag, metrics = mon.build_messages()
    mon.on_deactivate()
    level, msg, values = statuses(diag)['power_monitor: thermal']
    assert level == 1 and msg.startswith('THROTTLING: tj 97.5 C >= 95')
    assert values['throttling'] == 'true'
    assert policy_io.values_by_label(metrics)['throttling'] == 1.0
