"""Monitor sessions on disk, and the Markdown + PNG report that compares them.

A session is a JSON-lines file the power_monitor node writes (parameter `record_path`), one
object per line:

  {"kind": "meta", "label": "fp32", "source": "...", "has_power": false, ...}
  {"kind": "inference", "key": "/image_policy/policy_timing", "start_s": .., "end_s": ..,
   "latency_ms": ..}
  {"kind": "reading", "t": .., "power_w": .. | null, "cpu_percent": .., "gpu_percent": ..,
   "temp_max_c": .., "throttling": false}

`write_report(sessions, out_dir)` reads several sessions (e.g. one per engine precision of the
same policy), recomputes every figure with EnergyAccountant, and writes report.md with a table
in the spirit of the paper's Tables 9-10 (latency, speed-up, energy per inference, saving) plus
latency.png (latency over time), latency_cdf.png and power.png (power over time, or CPU load
when no session measured power).
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import threading
from typing import Any, Sequence

from qail_ros.errors import QailRosError
from qail_ros.monitor.energy import EnergyAccountant, PolicyStats

__all__ = ['SessionRecorder', 'Session', 'load_session', 'session_stats', 'write_report']


class SessionRecorder:
    """Appends session records to a JSON-lines file (thread-safe, line-buffered)."""

    def __init__(self, path: str, label: str, **meta: Any):
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        self.path = path
        self._f = open(path, 'w', encoding='utf-8', buffering=1)
        self._lock = threading.Lock()
        self._write({'kind': 'meta', 'label': label, **meta})

    def _write(self, obj: dict) -> None:
        with self._lock:
            if self._f is not None:
                self._f.write(json.dumps(obj, default=_jsonable) + '\n')

    def inference(self, key: str, start_s: float, end_s: float, latency_ms: float) -> None:
        self._write({'kind': 'inference', 'key': key, 'start_s': start_s, 'end_s': end_s,
                     'latency_ms': latency_ms})

    def reading(self, t: float, power_w: float | None, cpu_percent: float | None,
                gpu_percent: float | None, temp_max_c: float | None,
                throttling: bool) -> None:
        self._write({'kind': 'reading', 't': t, 'power_w': power_w, 'cpu_percent': cpu_percent,
                     'gpu_percent': gpu_percent, 'temp_max_c': temp_max_c,
                     'throttling': throttling})

    def close(self) -> None:
        with self._lock:
            if self._f is not None:
                self._f.close()
                self._f = None


def _jsonable(v: Any) -> Any:
    if isinstance(v, float) and math.isnan(v):
        return None
    return float(v)


@dataclasses.dataclass
class Session:
    label: str
    meta: dict
    inferences: list[dict]
    readings: list[dict]

    @property
    def has_power(self) -> bool:
        return any(r.get('power_w') is not None for r in self.readings)


def load_session(path: str, label: str | None = None) -> Session:
    """Read a session file; `label` overrides the one recorded in it."""
    meta: dict = {}
    infs, reads = [], []
    try:
        with open(path, encoding='utf-8') as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError:
                    raise QailRosError(f'{path}:{n} is not JSON: not a monitor session file '
                                       '(record one with the node parameter record_path)'
                                       ) from None
                kind = obj.get('kind')
                if kind == 'meta':
                    meta = obj
                elif kind == 'inference':
                    infs.append(obj)
                elif kind == 'reading':
                    reads.append(obj)
    except OSError as exc:
        raise QailRosError(f'cannot read session {path}: {exc.strerror}') from None
    return Session(label or meta.get('label') or os.path.basename(path), meta, infs, reads)


def session_stats(session: Session) -> PolicyStats:
    """Stats of a session over all its inferences (all timing topics merged)."""
    acc = EnergyAccountant(window_s=1e9)
    events = [(r['t'], 0, r) for r in session.readings if r.get('power_w') is not None]
    events += [(i['end_s'], 1, i) for i in session.inferences]
    for _t, kind, obj in sorted(events, key=lambda e: (e[0], e[1])):
        if kind == 0:
            acc.add_power(obj['t'], obj['power_w'])
        else:
            acc.add_inference(session.label, obj['start_s'], obj['end_s'], obj['latency_ms'])
    return acc.stats(session.label)


def _fmt(v: float, digits: int = 2) -> str:
    return 'n/a' if v is None or (isinstance(v, float) and math.isnan(v)) else f'{v:.{digits}f}'


def write_report(sessions: Sequence[Session], out_dir: str, title: str = 'Monitor report',
                 notes: Sequence[str] = ()) -> str:
    """Write report.md and PNG plots into out_dir; returns the Markdown path."""
    if not sessions:
        raise QailRosError('no sessions to report on: give at least one session file')
    os.makedirs(out_dir, exist_ok=True)
    stats = [session_stats(s) for s in sessions]
    ref = stats[0]
    lines = [f'# {title}', '']
    lines += [f'- {n}' for n in notes]
    if notes:
        lines.append('')
    lines += ['| engine | inferences | rate (Hz) | latency p50 (ms) | p90 (ms) | p99 (ms) | '
              'speed-up (p50) | mean power in inference (W) | energy / inference (J) | '
              'dynamic energy / inference (J) | idle baseline (W) | energy saving |',
              '|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|']
    for s, st in zip(sessions, stats):
        speedup = ref.latency_p50_ms / st.latency_p50_ms if st.latency_p50_ms else math.nan
        saving = (1.0 - st.energy_per_inference_j / ref.energy_per_inference_j
                  if ref.energy_per_inference_j and not math.isnan(ref.energy_per_inference_j)
                  else math.nan)
        lines.append(
            f'| {s.label} | {st.total} | {_fmt(st.rate_hz, 1)} | {_fmt(st.latency_p50_ms)} | '
            f'{_fmt(st.latency_p90_ms)} | {_fmt(st.latency_p99_ms)} | {_fmt(speedup)}x | '
            f'{_fmt(st.mean_power_w)} | {_fmt(st.energy_per_inference_j, 4)} | '
            f'{_fmt(st.dynamic_energy_per_inference_j, 4)} | {_fmt(st.baseline_w)} | '
            f'{"n/a" if math.isnan(saving) else f"{saving * 100:.1f} %"} |')
    lines.append('')
    for s in sessions:
        src = s.meta.get('source', 'unknown source')
        power = 'measured' if s.has_power else 'NOT measured (no power source)'
        lines.append(f'- **{s.label}**: source: {src}; power {power}; '
                     f'{len(s.readings)} samples.')
    lines.append('')
    plots = _plots(sessions, out_dir)
    lines += [f'![{name}]({name})' for name in plots]
    lines.append('')
    path = os.path.join(out_dir, 'report.md')
    with open(path, 'w', encoding='utf-8') as f:
        f.write('\n'.join(lines))
    with open(os.path.join(out_dir, 'summary.json'), 'w', encoding='utf-8') as f:
        json.dump({s.label: st.as_dict() for s, st in zip(sessions, stats)}, f, indent=1,
                  default=_jsonable)
    return path


def _plots(sessions: Sequence[Session], out_dir: str) -> list[str]:
    import matplotlib
    matplotlib.use('Agg')
    from matplotlib import pyplot as plt

    def plot(name: str, xlabel: str, ylabel: str, title: str, lines: list, **style) -> str:
        """One PNG in out_dir: `lines` are (label, x, y) of the sessions that have data."""
        fig, ax = plt.subplots(figsize=(6.4, 3.0), dpi=80)
        for label, x, y in lines:
            ax.plot(x, y, label=label, **style)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(os.path.join(out_dir, name))
        plt.close(fig)
        return name

    latency, cdf, load = [], [], []
    power = any(s.has_power for s in sessions)
    key = 'power_w' if power else 'cpu_percent'
    for s in sessions:
        if s.inferences:
            t0 = s.inferences[0]['start_s']
            latency.append((s.label, [i['start_s'] - t0 for i in s.inferences],
                            [i['latency_ms'] for i in s.inferences]))
            lat = sorted(i['latency_ms'] for i in s.inferences)
            cdf.append((s.label, lat, [(k + 1) / len(lat) for k in range(len(lat))]))
        pts = [(r['t'], r[key]) for r in s.readings if r.get(key) is not None]
        if pts:
            load.append((s.label, [p[0] - pts[0][0] for p in pts], [p[1] for p in pts]))
    return [plot('latency.png', 'time since first inference (s)', 'latency (ms)',
                 'Latency per inference', latency, linestyle='none', marker='.', ms=2),
            plot('latency_cdf.png', 'latency (ms)', 'fraction of inferences', 'Latency CDF',
                 cdf),
            plot('power.png', 'time (s)', 'power (W)', 'Power over time', load, lw=1)
            if power else
            plot('cpu_load.png', 'time (s)', 'CPU load (% mean of cores; no power)',
                 'CPU load over time (no power source)', load, lw=1)]
