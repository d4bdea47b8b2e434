"""Energy per inference from a replayed tegrastats log, with numbers checked by hand.

data/orin_nx_replay.log: eight Orin NX lines (JetPack 6 format) whose input rail VDD_IN reads
4, 4, 9, 9, 9, 4, 4, 4 W. Replayed with timebase 'log' every 125 ms from t = 1000 s, the
samples are at 1000.000, .125, .250, .375, .500, .625, .750, .875 (exact in binary).

Two inferences:
  A = [1000.1875, 1000.3125]  (125 ms)
      P(1000.1875) = halfway between 4 W (.125) and 9 W (.250) = 6.5 W
      E_A = (6.5 + 9) / 2 * 0.0625 + 9 * 0.0625 = 0.484375 + 0.5625 = 1.046875 J
  B = [1000.375, 1000.500]   (125 ms), 9 W throughout: E_B = 1.125 J
Idle samples (outside both windows): .000, .125, .625, .750, .875 -> baseline 4 W.
  energy per inference  = (1.046875 + 1.125) / 2 = 1.0859375 J
  dynamic               = ((1.046875 - 0.5) + (1.125 - 0.5)) / 2 = 0.5859375 J
  mean power in windows = 2.171875 J / 0.25 s = 8.6875 W
  rate                  = 1 / (1000.375 - 1000.1875) = 5.333 Hz
"""
import math
import os

import pytest

from qail_ros.monitor.energy import EnergyAccountant, integrate, percentile
from qail_ros.monitor.sources import LogReplay, Reading
from qail_ros.monitor.throttle import ThrottleDetector, ThrottleRule

REPLAY = os.path.join(os.path.dirname(__file__), 'data', 'orin_nx_replay.log')


def replayed_readings():
    src = LogReplay(REPLAY, interval_ms=125, time_scale=1e4, timebase='log', start_time=1000.0)
    src.start()
    assert src.finished.wait(5.0)
    readings = src.poll()
    src.stop()
    return readings


def test_energy_per_inference_from_replayed_log_hand_checked():
    readings = replayed_readings()
    assert [r.time_s for r in readings] == [1000.0 + 0.125 * i for i in range(8)]
    assert [r.power_w for r in readings] == [4.0, 4.0, 9.0, 9.0, 9.0, 4.0, 4.0, 4.0]
    assert {r.power_label for r in readings} == {'VDD_IN'}
    acc = EnergyAccountant(window_s=60)
    acc.add_inference('/policy/policy_timing', 1000.1875, 1000.3125)   # arrives before power
    for r in readings[:4]:
        acc.add_power(r.time_s, r.power_w)
    st = acc.stats('/policy/policy_timing')
    assert st.energy_count == 1 and st.energy_per_inference_j == pytest.approx(1.046875)
    acc.add_inference('/policy/policy_timing', 1000.375, 1000.5)
    assert acc.stats('/policy/policy_timing').energy_count == 1       # B still open: no sample
    for r in readings[4:]:
        acc.add_power(r.time_s, r.power_w)
    st = acc.stats('/policy/policy_timing')
    assert st.count == st.total == st.energy_count == 2
    assert st.baseline_w == pytest.approx(4.0)
    assert st.energy_per_inference_j == pytest.approx(1.0859375)
    assert st.dynamic_energy_per_inference_j == pytest.approx(0.5859375)
    assert st.mean_power_w == pytest.approx(8.6875)
    assert st.latency_p50_ms == pytest.approx(125.0)
    assert st.rate_hz == pytest.approx(1 / 0.1875)


def test_integrate_edges():
    t, w = [0.0, 1.0, 2.0], [2.0, 4.0, 4.0]
    assert integrate(t, w, 0.0, 2.0) == pytest.approx(3.0 + 4.0)
    assert integrate(t, w, 0.5, 0.5) == 0.0
    assert integrate(t, w, 0.5, 1.5) == pytest.approx((3.0 + 4.0) / 2 * 0.5 + 4.0 * 0.5)
    assert integrate(t, w, -0.1, 1.0) is None           # before the first sample
    assert integrate(t, w, 1.0, 2.1) is None            # after the last sample
    assert integrate([], [], 0, 1) is None


def test_window_before_first_sample_counts_for_latency_only():
    acc = EnergyAccountant()
    acc.add_inference('p', 5.0, 5.01)
    acc.add_power(6.0, 3.0)
    acc.add_power(7.0, 3.0)
    st = acc.stats('p')
    assert st.count == 1 and st.energy_count == 0
    assert math.isnan(st.energy_per_inference_j) and st.latency_p50_ms == pytest.approx(10.0)
    assert st.baseline_w == pytest.approx(3.0)


def test_no_power_source_still_reports_latency():
    acc = EnergyAccountant()
    for i, lat in enumerate([10, 20, 30, 40, 100]):
        acc.add_inference('p', i * 0.1, i * 0.1 + lat / 1e3)
    st = acc.stats('p')
    assert st.latency_p50_ms == pytest.approx(30.0)
    assert st.latency_p90_ms == pytest.approx(percentile([10, 20, 30, 40, 100], 90))
    assert st.latency_p90_ms == pytest.approx(76.0)
    assert st.rate_hz == pytest.approx(10.0)
    assert math.isnan(st.energy_per_inference_j) and math.isnan(st.baseline_w)


def test_window_trims_old_data_and_keeps_totals():
    acc = EnergyAccountant(window_s=1.0)
    for i in range(30):
        acc.add_power(i * 0.1, 5.0)
        acc.add_inference('p', i * 0.1 + 0.01, i * 0.1 + 0.02)
    st = acc.stats('p')
    assert st.total == 30 and st.count <= 11
    assert st.energy_per_inference_j == pytest.approx(0.05)
    assert len(acc.times) <= 12


def test_overlapping_policies_each_get_full_power_and_shared_baseline():
    acc = EnergyAccountant()
    for i in range(11):
        acc.add_power(i * 0.1, 10.0 if 0.3 <= i * 0.1 <= 0.5 else 2.0)
    acc.add_inference('a', 0.3, 0.5)
    acc.add_inference('b', 0.4, 0.5)
    a, b = acc.all_stats()
    assert a.energy_per_inference_j == pytest.approx(2.0)
    assert b.energy_per_inference_j == pytest.approx(1.0)
    assert a.baseline_w == b.baseline_w == pytest.approx(2.0)


def _r(temps, gpu=None, gpu_mhz=None, throttled=None):
    return Reading(time_s=0.0, temperatures_c=temps, gpu_percent=gpu, gpu_freq_mhz=gpu_mhz,
                   throttled=throttled)


def test_throttle_rule():
    det = ThrottleDetector(ThrottleRule(hot_c=95, warm_c=80, busy_percent=80, clock_drop=0.85))
    st = det.update(_r({'tj': 60.0, 'PMIC': 100.0}, gpu=90, gpu_mhz=1300))
    assert not st.throttling and not st.hot and st.hottest == 'tj'   # PMIC placeholder ignored
    st = det.update(_r({'tj': 85.0}, gpu=95, gpu_mhz=1300))
    assert st.hot and not st.throttling                             # hot, clock still at peak
    st = det.update(_r({'tj': 85.0}, gpu=95, gpu_mhz=1000))         # busy, hot, 77 % of peak
    assert st.throttling and 'GPU busy 95% at 1000 of 1300 MHz' in st.reason
    st = det.update(_r({'tj': 70.0}, gpu=95, gpu_mhz=1000))         # slowed but cool: DVFS
    assert not st.throttling
    st = det.update(_r({'tj': 96.0}))
    assert st.throttling and '>= 95' in st.reason
    st = det.update(_r({'GPU': 50.0}, throttled=True))
    assert st.throttling and 'source reports' in st.reason
    assert not det.update(_r({})).throttling


def test_percentile_is_numpy_linear_interpolation():
    # hand-worked: rank (5 - 1) * 0.9 = 3.6 -> 40 + 0.6 * (100 - 40)
    assert percentile([100, 10, 30, 20, 40], 90) == pytest.approx(76.0)
    assert percentile([5.0], 50) == 5.0 and math.isnan(percentile([], 50))
