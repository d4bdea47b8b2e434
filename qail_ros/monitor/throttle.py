"""Thermal-throttling flag: one documented rule over temperatures, loads and clocks.

A Jetson (or GPU) that gets too hot lowers its clocks: the policy gets slower while nothing
else changed. tegrastats does not print "throttled", so the monitor infers it. The rule
(ThrottleRule, documented in docs/monitor.md):

  throttling  if the source itself reports thermal throttling (NVML clock-event reasons), or
              the hottest sensor >= hot_c (default 95 C: Jetson Orin starts software throttling
              at 99 C on its CPU/GPU/CV zones, so this flags it just before), or
              the hottest sensor >= warm_c (default 80 C) while the GPU (or CPU) is busy
              (load >= busy_percent, default 80 %) and its clock is below clock_drop (default
              0.85) x the highest clock seen for it in this run: busy + hot + slowed = throttled.
  hot         the hottest sensor >= warm_c (a warning, not yet throttling).

Sensors named in ignore (default: PMIC, which Nano/Xavier/TX2 print as a fixed 100C or 50C
placeholder) and absent (-256C) sensors never count.
"""
from __future__ import annotations

import dataclasses

from qail_ros.monitor.sources import Reading

__all__ = ['ThrottleRule', 'ThrottleState', 'ThrottleDetector']


@dataclasses.dataclass
class ThrottleRule:
    hot_c: float = 95.0
    warm_c: float = 80.0
    busy_percent: float = 80.0
    clock_drop: float = 0.85
    ignore: tuple[str, ...] = ('PMIC',)


@dataclasses.dataclass
class ThrottleState:
    throttling: bool = False
    hot: bool = False
    hottest: str = ''
    hottest_c: float | None = None
    reason: str = 'no temperature reading'


class ThrottleDetector:
    """Applies a ThrottleRule to successive Readings (remembers the highest clocks seen)."""

    def __init__(self, rule: ThrottleRule | None = None):
        self.rule = rule or ThrottleRule()
        self.max_gpu_mhz = 0.0
        self.max_cpu_mhz = 0.0
        self.state = ThrottleState()

    def update(self, r: Reading) -> ThrottleState:
        rule = self.rule
        temps = {k: v for k, v in r.temperatures_c.items()
                 if k.upper() not in {i.upper() for i in rule.ignore}}
        st = ThrottleState()
        if temps:
            st.hottest, st.hottest_c = max(temps.items(), key=lambda kv: kv[1])
            st.hot = st.hottest_c >= rule.warm_c
            st.reason = f'hottest {st.hottest} {st.hottest_c:.1f} C'
        slowed = []
        for name, load, freq, attr in (('GPU', r.gpu_percent, r.gpu_freq_mhz, 'max_gpu_mhz'),
                                       ('CPU', r.cpu_percent, r.cpu_freq_mhz, 'max_cpu_mhz')):
            if freq is None:
                continue
            peak = max(getattr(self, attr), freq)
            setattr(self, attr, peak)
            if load is not None and load >= rule.busy_percent and freq < rule.clock_drop * peak:
                slowed.append(f'{name} busy {load:.0f}% at {freq:.0f} of {peak:.0f} MHz')
        if r.throttled:
            st.throttling, st.reason = True, 'source reports thermal throttling'
        elif st.hottest_c is not None and st.hottest_c >= rule.hot_c:
            st.throttling = True
            st.reason = f'{st.hottest} {st.hottest_c:.1f} C >= {rule.hot_c:g} C'
        elif st.hot and slowed:
            st.throttling = True
            st.reason = f'{st.hottest} {st.hottest_c:.1f} C and ' + ', '.join(slowed)
        self.state = st
        return st
