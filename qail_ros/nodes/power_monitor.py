"""power_monitor: latency, power and energy per inference of the policy nodes, and thermal state.

Reads one power source (qail_ros.monitor.sources: tegrastats child process on a Jetson, a
followed or replayed tegrastats log, NVML on an NVIDIA GPU, RAPL on x86, else psutil with no
power) and the per-inference timing every policy node publishes, and computes per policy node:
latency p50/p90/p99, rate, mean power during inference, energy per inference (power integrated
over the inference windows) and the idle baseline (power outside every window), plus a thermal
throttling flag (rule: qail_ros.monitor.throttle). docs/monitor.md has the details.

Subscribes
  timing_topics (parameter, list)  std_msgs/Float64MultiArray per inference (qail_ros.policy_io
                 contract: wall-clock start_s/end_s); a labelled array with only latency_ms is
                 accepted too (window ends at arrival). timing_msg_type selects the type.

Publishes (every publish_period_s)
  /diagnostics   diagnostic_msgs/DiagnosticArray (the ROS convention; rqt_robot_monitor reads
                 it): statuses 'power_monitor: source', 'power_monitor: power',
                 'power_monitor: thermal' and one 'power_monitor: policy TOPIC' per timing
                 topic. KeyValue values are plain numbers; the unit is in the key, e.g.
                 'VDD_IN power (W)' = '4.523' (a rail's power in watts, never labelled mA).
  ~/metrics      std_msgs/Float64MultiArray, the same numbers for machines: dim[0].label is the
                 comma-joined list of value names (read with qail_ros.policy_io.values_by_label):
                 power_w, baseline_w, cpu_percent, gpu_percent, gpu_freq_mhz, temp_max_c,
                 throttling (0/1), rail.NAME.power_w for each rail, and TOPIC.latency_p50_ms,
                 .latency_p90_ms, .latency_p99_ms, .rate_hz, .mean_power_w, .energy_j,
                 .dynamic_energy_j, .inferences per timing topic. NaN = not measured.

Parameters: source (auto|tegrastats|logfile|replay|nvml|rapl|proc), interval_ms, logfile,
replay_time_scale, replay_loop, tegrastats_path, power_rails (comma-separated; '' = input rail
or sum), timing_topics, timing_msg_type, publish_period_s, window_s, hot_c, warm_c,
record_path (JSON-lines session for `qail-ros monitor --report`), session_label, hardware_id.
"""
from __future__ import annotations

import functools
import math
import socket
import sys
import threading
import time

from qail_ros import messages, policy_io
from qail_ros.errors import ParameterError
from qail_ros.runtime import Node, run_node

__all__ = ['PowerMonitor', 'main']

OK, WARN, ERROR, STALE = 0, 1, 2, 3


def _num(v: float | None, digits: int = 3) -> str:
    return 'nan' if v is None or (isinstance(v, float) and math.isnan(v)) else f'{v:.{digits}f}'


def _status(*, level: int, name: str, message: str, values: list, hardware_id: str):
    """A DiagnosticStatus (messages.new takes `name` as the type, so fields are set here)."""
    st = messages.new('diagnostic_msgs/msg/DiagnosticStatus', level=level, message=message,
                      hardware_id=hardware_id, values=values)
    st.name = name
    return st


def _nan(v: float | None) -> float:
    return math.nan if v is None else float(v)


class PowerMonitor(Node):
    """See the module docstring."""

    def __init__(self, **kwargs):
        super().__init__('power_monitor', **kwargs)
        p = self.declare_parameter
        self.source_kind = p('source', 'auto', 'auto|tegrastats|logfile|replay|nvml|rapl|proc'
                             ).value
        self.interval_ms = p('interval_ms', 100, 'sampling period (tegrastats --interval)').value
        self.logfile = p('logfile', '', 'tegrastats log to follow (logfile) or replay').value
        self.replay_time_scale = p('replay_time_scale', 1.0, 'replay speed-up').value
        self.replay_loop = p('replay_loop', False, 'replay the log forever').value
        self.tegrastats_path = p('tegrastats_path', 'tegrastats', 'tegrastats executable').value
        rails = p('power_rails', '', "rails summed as the power (comma-separated); '' = the "
                  'input rail (VDD_IN / POM_5V_IN / VIN) or the sum of all rails').value
        self.power_rails = [r.strip() for r in rails.split(',') if r.strip()]
        self.timing_topics = list(p('timing_topics', ['/vla_policy/policy_timing'],
                                    'policy timing topics, one stats block each').value)
        self.timing_msg_type = p('timing_msg_type', 'std_msgs/msg/Float64MultiArray',
                                 'message type of the timing topics').value
        self.publish_period_s = p('publish_period_s', 1.0, 'seconds between diagnostics').value
        self.window_s = p('window_s', 60.0, 'statistics window (s)').value
        self.hot_c = p('hot_c', 95.0, 'throttling when the hottest sensor reaches this').value
        self.warm_c = p('warm_c', 80.0, 'hot (and throttling if clocks drop) from here').value
        self.record_path = p('record_path', '', 'JSON-lines session file; empty = none').value
        self.session_label = p('session_label', '', 'label of the recorded session').value
        self.hardware_id = p('hardware_id', '', 'diagnostics hardware_id; empty = hostname'
                             ).value or socket.gethostname()
        self._validate()

        from qail_ros.monitor.energy import EnergyAccountant
        from qail_ros.monitor.throttle import ThrottleDetector, ThrottleRule
        self.accountant = EnergyAccountant(self.window_s)
        self.throttle = ThrottleDetector(ThrottleRule(hot_c=self.hot_c, warm_c=self.warm_c))
        self.diag_pub = self.create_publisher('diagnostic_msgs/msg/DiagnosticArray',
                                              '/diagnostics', 10)
        self.metrics_pub = self.create_publisher('std_msgs/msg/Float64MultiArray', '~/metrics',
                                                 10)
        self.timing_subs = [
            self.create_subscription(self.timing_msg_type, topic,
                                     functools.partial(self.timing_callback, topic), 100)
            for topic in self.timing_topics]
        self.source = None
        self.source_reasons: list[str] = []
        self.source_error: str | None = None
        self.recorder = None
        self.last_reading = None
        self.last_reading_wall = 0.0
        self.readings = 0
        self.bad_timing = 0
        self.unparsed: set[str] = set()
        self._lock = threading.Lock()
        self._timers: list = []

    def _validate(self) -> None:
        problems = []
        if self.interval_ms <= 0:
            problems.append(f'interval_ms must be > 0, not {self.interval_ms}')
        if self.publish_period_s <= 0:
            problems.append(f'publish_period_s must be > 0, not {self.publish_period_s}')
        if self.window_s <= 0:
            problems.append(f'window_s must be > 0, not {self.window_s}')
        if self.replay_time_scale <= 0:
            problems.append(f'replay_time_scale must be > 0, not {self.replay_time_scale}')
        if self.source_kind in ('logfile', 'replay') and not self.logfile:
            problems.append(f"source '{self.source_kind}' needs logfile:=PATH")
        if problems:
            raise ParameterError(f"node '{self.get_name()}': " + '; '.join(problems))

    # -- lifecycle ------------------------------------------------------------------------------
    def on_configure(self) -> None:
        from qail_ros.monitor.sources import SourceError, detect_source
        try:
            self.source, self.source_reasons = detect_source(
                self.source_kind, interval_ms=int(self.interval_ms), logfile=self.logfile,
                time_scale=float(self.replay_time_scale), loop=bool(self.replay_loop),
                power_rails=self.power_rails, tegrastats=self.tegrastats_path)
        except SourceError as exc:
            raise ParameterError(f"node '{self.get_name()}': power source: {exc}") from None
        log = self.get_logger()
        if self.source.has_power:
            log.info(f'power source: {self.source.describe()}')
        else:
            why = f' ({"; ".join(self.source_reasons)})' if self.source_reasons else ''
            log.warning(f'no power source available{why}: reporting latency, CPU and RAM '
                        f'only, from {self.source.describe()}')
        if self.record_path:
            from qail_ros.monitor.report import SessionRecorder
            self.recorder = SessionRecorder(
                self.record_path, self.session_label or self.get_name(),
                source=self.source.describe(), has_power=self.source.has_power,
                timing_topics=self.timing_topics, interval_ms=self.interval_ms)

    def on_activate(self) -> None:
        self.source.start()
        self._timers = [self.create_timer(self.interval_ms / 1000.0, self.sample_callback),
                        self.create_timer(self.publish_period_s, self.publish_callback)]

    def on_deactivate(self) -> None:
        for timer in self._timers:
            timer.cancel()
        self._timers = []
        if self.source is not None:
            self.sample_callback()
            self.source.stop()

    def on_cleanup(self) -> None:
        if self.recorder is not None:
            self.recorder.close()
            self.recorder = None

    # -- callbacks ------------------------------------------------------------------------------
    def timing_callback(self, topic: str, msg) -> None:
        from qail_ros.monitor.timing import decode_timing
        window = decode_timing(msg, time.time())
        if window is None:
            self.bad_timing += 1
            if self.bad_timing == 1:
                self.get_logger().warning(f'{topic}: not a policy timing message (no start_s/'
                                          'end_s or latency_ms labels); ignored')
            return
        with self._lock:
            self.accountant.add_inference(topic, window.start_s, window.end_s, window.latency_ms)
        if self.recorder is not None:
            self.recorder.inference(topic, window.start_s, window.end_s, window.latency_ms)

    def sample_callback(self) -> None:
        """Take the source's new readings into the accounting."""
        if self.source is None:
            return
        try:
            readings = self.source.poll()
        except Exception as exc:  # noqa: BLE001 - a bad read must not stop the monitor
            self.source_error = f'{type(exc).__name__}: {exc}'
            return
        self.source_error = getattr(self.source, 'error', None) or None
        for r in readings:
            self.add_reading(r)

    def add_reading(self, r) -> None:
        with self._lock:
            if r.power_w is not None:
                self.accountant.add_power(r.time_s, r.power_w)
            state = self.throttle.update(r)
            self.last_reading = r
            self.last_reading_wall = time.time()
            self.readings += 1
            self.unparsed.update(r.unparsed)
        if self.recorder is not None:
            temps = list(r.temperatures_c.values())
            self.recorder.reading(r.time_s, r.power_w, r.cpu_percent, r.gpu_percent,
                                  max(temps) if temps else None, state.throttling)

    def publish_callback(self) -> None:
        diag, metrics = self.build_messages()
        self.diag_pub.publish(diag)
        self.metrics_pub.publish(metrics)

    # -- output ---------------------------------------------------------------------------------
    def snapshot(self) -> dict:
        """Everything the diagnostics / live view show, computed now."""
        with self._lock:
            baseline = self.accountant.baseline_w()
            stats = {t: self.accountant.stats(t, baseline) for t in self.timing_topics}
            return {'reading': self.last_reading, 'throttle': self.throttle.state,
                    'stats': stats, 'baseline_w': baseline, 'readings': self.readings,
                    'unparsed': sorted(self.unparsed)}

    def build_messages(self):
        snap = self.snapshot()
        r, th = snap['reading'], snap['throttle']
        kv = functools.partial(messages.new, 'diagnostic_msgs/msg/KeyValue')
        status = functools.partial(_status, hardware_id=self.hardware_id)
        src = self.source
        has_power = bool(src is not None and src.has_power)
        stalled = (self.readings > 0 and
                   time.time() - self.last_reading_wall > max(5 * self.interval_ms / 1e3, 3.0))
        if self.source_error:
            level, msg = ERROR, f'source failed: {self.source_error}'
        elif src is None:
            level, msg = ERROR, 'not configured'
        elif not has_power:
            level, msg = WARN, 'no power source available: latency only'
        elif self.readings == 0 or stalled:
            level, msg = STALE, f'no sample from {src.name} recently'
        else:
            level, msg = OK, src.describe()
        values = [kv(key='source', value=src.describe() if src else 'none'),
                  kv(key='power measured', value='true' if has_power else 'false'),
                  kv(key='samples', value=str(snap['readings']))]
        values += [kv(key=f'not used ({i + 1})', value=why)
                   for i, why in enumerate(self.source_reasons)]
        if snap['unparsed']:
            values.append(kv(key='unparsed tokens', value=' '.join(snap['unparsed'][:50])))
        statuses = [status(level=level, name='power_monitor: source', message=msg,
                           values=values)]

        pvals = []
        if r is not None:
            pvals.append(kv(key=f'power (W) [{r.power_label or "n/a"}]', value=_num(r.power_w)))
            pvals += [kv(key=f'{name} power (W)', value=_num(w)) for name, w in r.rails_w.items()]
            pvals += [kv(key='idle baseline (W)', value=_num(snap['baseline_w'])),
                      kv(key='CPU load (%)', value=_num(r.cpu_percent, 1)),
                      kv(key='CPU clock (MHz)', value=_num(r.cpu_freq_mhz, 0)),
                      kv(key='GPU load (%)', value=_num(r.gpu_percent, 1)),
                      kv(key='GPU clock (MHz)', value=_num(r.gpu_freq_mhz, 0)),
                      kv(key='RAM used (MB)', value=_num(r.ram_used_mb, 0)),
                      kv(key='RAM total (MB)', value=_num(r.ram_total_mb, 0))]
        pmsg = (f'{r.power_w:.2f} W' if r is not None and r.power_w is not None
                else 'power not measured')
        statuses.append(status(level=OK if r is not None else STALE,
                               name='power_monitor: power', message=pmsg, values=pvals))

        tvals = [] if r is None else [kv(key=f'{k} (C)', value=_num(v, 2))
                                      for k, v in r.temperatures_c.items()]
        tvals.append(kv(key='throttling', value='true' if th.throttling else 'false'))
        tlevel = WARN if (th.throttling or th.hot) else OK
        tmsg = ('THROTTLING: ' if th.throttling else 'hot: ' if th.hot else '') + th.reason
        statuses.append(status(level=tlevel, name='power_monitor: thermal', message=tmsg,
                               values=tvals))

        labels = ['power_w', 'baseline_w', 'cpu_percent', 'gpu_percent', 'gpu_freq_mhz',
                  'temp_max_c', 'throttling']
        temps = list(r.temperatures_c.values()) if r is not None else []
        nums = [_nan(r.power_w if r else None), _nan(snap['baseline_w']),
                _nan(r.cpu_percent if r else None), _nan(r.gpu_percent if r else None),
                _nan(r.gpu_freq_mhz if r else None), max(temps) if temps else math.nan,
                1.0 if th.throttling else 0.0]
        if r is not None:
            for name, w in r.rails_w.items():
                labels.append(f'rail.{name}.power_w')
                nums.append(w)

        for topic, st in snap['stats'].items():
            svals = [kv(key='inferences (window)', value=str(st.count)),
                     kv(key='inferences (total)', value=str(st.total)),
                     kv(key='latency p50 (ms)', value=_num(st.latency_p50_ms)),
                     kv(key='latency p90 (ms)', value=_num(st.latency_p90_ms)),
                     kv(key='latency p99 (ms)', value=_num(st.latency_p99_ms)),
                     kv(key='rate (Hz)', value=_num(st.rate_hz, 2)),
                     kv(key='mean power during inference (W)', value=_num(st.mean_power_w)),
                     kv(key='energy per inference (J)', value=_num(st.energy_per_inference_j, 5)),
                     kv(key='dynamic energy per inference (J)',
                        value=_num(st.dynamic_energy_per_inference_j, 5)),
                     kv(key='idle baseline (W)', value=_num(st.baseline_w))]
            if st.count == 0:
                slevel, smsg = STALE, 'no timing messages in the window'
            else:
                slevel = OK
                smsg = f'p50 {st.latency_p50_ms:.2f} ms, {_num(st.rate_hz, 1)} Hz'
                smsg += (f', {st.energy_per_inference_j:.4f} J/inference'
                         if not math.isnan(st.energy_per_inference_j) else ', energy n/a')
            statuses.append(status(level=slevel, name=f'power_monitor: policy {topic}',
                                   message=smsg, values=svals))
            for name, v in (('latency_p50_ms', st.latency_p50_ms),
                            ('latency_p90_ms', st.latency_p90_ms),
                            ('latency_p99_ms', st.latency_p99_ms), ('rate_hz', st.rate_hz),
                            ('mean_power_w', st.mean_power_w),
                            ('energy_j', st.energy_per_inference_j),
                            ('dynamic_energy_j', st.dynamic_energy_per_inference_j),
                            ('inferences', float(st.count))):
                labels.append(f'{topic}.{name}')
                nums.append(v)

        header = messages.new('std_msgs/msg/Header', stamp=self.now())
        diag = messages.new('diagnostic_msgs/msg/DiagnosticArray', header=header,
                            status=statuses)
        return diag, policy_io.labelled_values(labels, nums, kind='float64')


def main(args=None) -> int:
    return run_node(PowerMonitor, args)


if __name__ == '__main__':
    sys.exit(main())
