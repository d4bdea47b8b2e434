"""Energy per inference: power samples integrated over each inference's wall-clock window.

The model (docs/monitor.md has the worked example the tests check by hand):

* Power between two samples is interpolated linearly (trapezoidal rule); an inference
  [start_s, end_s] gets E = integral of P(t) dt over its window, in joules. A window is
  resolved once a sample at or after its end has arrived; a window that began before the first
  sample cannot be integrated and counts for latency only.
* The idle baseline is the mean power of the samples that fall outside every inference window
  (of every policy): what the machine draws anyway. It is reported separately, with the
  dynamic energy E - baseline * duration, the part the inference itself added.
* Mean power during inference = sum(E) / sum(duration).
* Windows of different policies that overlap are each charged the full power (attribution is
  per window, not split), which the report says.

Latency percentiles, rate and energy figures are over the last `window_s` seconds.
"""
from __future__ import annotations

import bisect
import collections
import dataclasses
import math
from typing import Iterable

__all__ = ['integrate', 'EnergyAccountant', 'PolicyStats', 'percentile']


def integrate(times: list[float], watts: list[float], t0: float, t1: float) -> float | None:
    """Joules between t0 and t1 of the piecewise-linear power through (times, watts).

    None when [t0, t1] is not inside [times[0], times[-1]] (nothing measured there).
    """
    if not times or t1 < t0 or t0 < times[0] or t1 > times[-1]:
        return None
    if t1 == t0:
        return 0.0

    def power_at(t: float) -> float:
        i = bisect.bisect_right(times, t) - 1
        if i >= len(times) - 1:
            return watts[-1]
        ta, tb = times[i], times[i + 1]
        if tb == ta:
            return watts[i + 1]
        return watts[i] + (watts[i + 1] - watts[i]) * (t - ta) / (tb - ta)

    inner = [i for i in range(bisect.bisect_right(times, t0), bisect.bisect_left(times, t1))]
    points = [(t0, power_at(t0))] + [(times[i], watts[i]) for i in inner] + [(t1, power_at(t1))]
    return sum((pb + pa) / 2.0 * (tb - ta) for (ta, pa), (tb, pb) in zip(points, points[1:]))


def percentile(values: list[float], q: float) -> float:
    """Linear-interpolated percentile (numpy.percentile); NaN for no values."""
    if not values:
        return math.nan
    import numpy as np
    return float(np.percentile(values, q))


@dataclasses.dataclass
class PolicyStats:
    """What the monitor publishes per policy node (NaN where not measurable)."""

    key: str
    count: int = 0                       # inferences in the window
    total: int = 0                       # inferences since start
    latency_p50_ms: float = math.nan
    latency_p90_ms: float = math.nan
    latency_p99_ms: float = math.nan
    latency_mean_ms: float = math.nan
    rate_hz: float = math.nan
    energy_count: int = 0                # inferences with a measured energy
    energy_per_inference_j: float = math.nan
    dynamic_energy_per_inference_j: float = math.nan
    mean_power_w: float = math.nan       # during inference
    baseline_w: float = math.nan         # idle, outside every inference

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class _Inference:
    start_s: float
    end_s: float
    latency_ms: float
    energy_j: float | None = None
    resolved: bool = False


class EnergyAccountant:
    """Keeps power samples and inference windows; computes PolicyStats (see module doc)."""

    def __init__(self, window_s: float = 60.0):
        if window_s <= 0:
            raise ValueError(f'window_s must be > 0, not {window_s}')
        self.window_s = float(window_s)
        self.times: list[float] = []
        self.watts: list[float] = []
        self.inferences: dict[str, collections.deque[_Inference]] = {}
        self.totals: collections.Counter[str] = collections.Counter()

    # -- input ----------------------------------------------------------------------------------
    def add_power(self, time_s: float, power_w: float) -> None:
        """A power sample (samples must come in time order; an older one is ignored)."""
        if self.times and time_s < self.times[-1]:
            return
        self.times.append(float(time_s))
        self.watts.append(float(power_w))
        self._resolve()
        self._trim(time_s)

    def add_inference(self, key: str, start_s: float, end_s: float,
                      latency_ms: float | None = None) -> None:
        if end_s < start_s:
            start_s, end_s = end_s, start_s
        lat = (end_s - start_s) * 1e3 if latency_ms is None else float(latency_ms)
        self.inferences.setdefault(key, collections.deque()).append(
            _Inference(float(start_s), float(end_s), lat))
        self.totals[key] += 1
        self._resolve()
        self._trim(end_s)

    # -- bookkeeping ----------------------------------------------------------------------------
    def _resolve(self) -> None:
        if not self.times:
            return
        first, last = self.times[0], self.times[-1]
        for infs in self.inferences.values():
            for inf in infs:
                if inf.resolved:
                    continue
                if inf.start_s < first:
                    inf.resolved = True          # before any sample: latency only
                elif inf.end_s <= last:
                    inf.energy_j = integrate(self.times, self.watts, inf.start_s, inf.end_s)
                    inf.resolved = True

    def _trim(self, now: float) -> None:
        horizon = now - self.window_s
        # keep one sample before the horizon so windows just inside it stay integrable
        cut = bisect.bisect_left(self.times, horizon) - 1
        if cut > 0:
            del self.times[:cut]
            del self.watts[:cut]
        for infs in self.inferences.values():
            while infs and infs[0].end_s < horizon and infs[0].resolved:
                infs.popleft()

    def _windows(self) -> list[tuple[float, float]]:
        return sorted((i.start_s, i.end_s) for infs in self.inferences.values() for i in infs)

    # -- output ---------------------------------------------------------------------------------
    def baseline_w(self) -> float:
        """Mean power of the samples outside every inference window (NaN if none)."""
        merged: list[list[float]] = []
        for start, end in self._windows():
            if merged and start <= merged[-1][1]:
                merged[-1][1] = max(merged[-1][1], end)
            else:
                merged.append([start, end])
        starts = [m[0] for m in merged]
        idle = []
        for t, p in zip(self.times, self.watts):
            i = bisect.bisect_right(starts, t) - 1
            if i < 0 or t > merged[i][1]:
                idle.append(p)
        return sum(idle) / len(idle) if idle else math.nan

    def keys(self) -> list[str]:
        return list(self.inferences)

    def stats(self, key: str, baseline_w: float | None = None) -> PolicyStats:
        infs = list(self.inferences.get(key, ()))
        st = PolicyStats(key=key, count=len(infs), total=self.totals[key])
        if not infs:
            return st
        lat = [i.latency_ms for i in infs]
        st.latency_p50_ms = percentile(lat, 50)
        st.latency_p90_ms = percentile(lat, 90)
        st.latency_p99_ms = percentile(lat, 99)
        st.latency_mean_ms = sum(lat) / len(lat)
        if len(infs) >= 2 and infs[-1].start_s > infs[0].start_s:
            st.rate_hz = (len(infs) - 1) / (infs[-1].start_s - infs[0].start_s)
        measured = [i for i in infs if i.energy_j is not None]
        st.baseline_w = self.baseline_w() if baseline_w is None else baseline_w
        if measured:
            energy = sum(i.energy_j for i in measured)  # type: ignore[misc]
            duration = sum(i.end_s - i.start_s for i in measured)
            st.energy_count = len(measured)
            st.energy_per_inference_j = energy / len(measured)
            st.mean_power_w = energy / duration if duration > 0 else math.nan
            if not math.isnan(st.baseline_w):
                st.dynamic_energy_per_inference_j = (energy - st.baseline_w * duration) / len(
                    measured)
        return st

    def all_stats(self) -> list[PolicyStats]:
        base = self.baseline_w()
        return [self.stats(k, base) for k in self.keys()]


def summarize(stats: Iterable[PolicyStats]) -> dict[str, dict]:
    return {s.key: s.as_dict() for s in stats}
