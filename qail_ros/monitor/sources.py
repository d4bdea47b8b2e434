"""Where power, clocks, load and temperatures come from: one `Reading` per sample, any source.

  TegrastatsProcess  runs `tegrastats --interval N` as a child process (Jetson); stops it cleanly
  LogFollow          follows a file `tegrastats --logfile` is writing (like `tail -f`)
  LogReplay          replays a recorded tegrastats log at its own pace (`time_scale` x faster)
  NvmlSource         NVIDIA GPUs through NVML (nvidia-ml-py): board power, energy counter,
                     utilisation, clocks, memory, temperature, thermal-throttle reasons
  RaplSource         x86 CPUs: RAPL energy counters under /sys/class/powercap (package domains)
  ProcSource         CPU load, clocks, RAM, temperatures through psutil: no power

`detect_source()` picks the first that works in that order (a log when one is given) and says why
each other one was not used, so the node can tell the user which source it reads.

Every source is polled: `poll()` returns the readings since the last call and never blocks.
Sources that read a stream (tegrastats, logs) do it on a daemon thread; `stop()` ends it.
"""
from __future__ import annotations

import abc
import dataclasses
import glob
import os
import queue
import shutil
import subprocess
import threading
import time
from typing import Callable, Sequence

from qail_ros.errors import QailRosError
from qail_ros.monitor.tegrastats import (PLAUSIBLE, TegrastatsSample, parse_line,
                                         read_capped_lines, total_power_mw)

__all__ = ['Reading', 'PowerSource', 'TegrastatsProcess', 'LogFollow', 'LogReplay',
           'NvmlSource', 'RaplSource', 'ProcSource', 'detect_source', 'reading_from_sample',
           'read_log_lines', 'SourceError']


class SourceError(QailRosError):
    """A power source that cannot be opened or read."""


_MAX_LINE = 8192  # tegrastats.MAX_LINE_CHARS


def _plausible(r: 'Reading', what: str, value: float | None, kind: str) -> float | None:
    """`value` if inside its physical range (tegrastats.PLAUSIBLE), else None and a note in
    `r.unparsed`: a glitching counter or sensor is never passed on as a measurement."""
    if value is None:
        return None
    low, high = PLAUSIBLE[kind]
    if low <= value <= high:
        return value
    r.unparsed.append(f'{what}={value:g} (outside {low:g}..{high:g})')
    return None


@dataclasses.dataclass
class Reading:
    """One sample of the machine, in SI-style units named by each field.

    power_w is the whole-module (or whole-device) power the energy accounting integrates;
    rails_w each rail's instantaneous power; throttled is what the source itself reports
    (NVML thermal throttle reasons), None when it cannot tell.
    """

    time_s: float                              # wall clock (time.time()) of the sample
    power_w: float | None = None
    power_label: str = ''                      # which rails / counter power_w is
    rails_w: dict[str, float] = dataclasses.field(default_factory=dict)
    temperatures_c: dict[str, float] = dataclasses.field(default_factory=dict)
    cpu_percent: float | None = None           # mean over online cores
    cpu_freq_mhz: float | None = None          # highest online core clock
    gpu_percent: float | None = None
    gpu_freq_mhz: float | None = None
    ram_used_mb: float | None = None
    ram_total_mb: float | None = None
    throttled: bool | None = None
    unparsed: list[str] = dataclasses.field(default_factory=list)
    sample: TegrastatsSample | None = None


def reading_from_sample(sample: TegrastatsSample, time_s: float,
                        power_rails: Sequence[str] | None = None) -> Reading:
    """A Reading from a parsed tegrastats line (power_w: see total_power_mw)."""
    total_mw, label = total_power_mw(sample.rails, power_rails)
    gpu = sample.gpu
    freqs = [c.freq_mhz for c in sample.cpu if c.freq_mhz is not None]
    return Reading(
        time_s=time_s, power_w=None if total_mw is None else total_mw / 1000.0,
        power_label=label, rails_w={n: r.cur_mw / 1000.0 for n, r in sample.rails.items()},
        temperatures_c=dict(sample.temperatures_c), cpu_percent=sample.cpu_load_percent(),
        cpu_freq_mhz=max(freqs) if freqs else None,
        gpu_percent=None if gpu is None else gpu.load_percent,
        gpu_freq_mhz=None if gpu is None else gpu.freq_mhz,
        ram_used_mb=None if sample.ram_mb is None else sample.ram_mb[0],
        ram_total_mb=None if sample.ram_mb is None else sample.ram_mb[1],
        unparsed=list(sample.unparsed), sample=sample)


class PowerSource(abc.ABC):
    """A source of Readings. `name` says what it is, `has_power` whether power_w is measured."""

    name: str = 'abstract'
    has_power: bool = False

    def start(self) -> None:
        """Begin sampling (threads, child processes)."""

    @abc.abstractmethod
    def poll(self) -> list[Reading]:
        """Readings since the last call (possibly none); never blocks."""

    def stop(self) -> None:
        """Stop sampling and release everything started."""

    def describe(self) -> str:
        return self.name

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.stop()


# -- tegrastats text sources --------------------------------------------------------------------
class _LineSource(PowerSource):
    """Common part of the tegrastats text sources: a thread puts (time, line) on a queue."""

    has_power = True

    def __init__(self, power_rails: Sequence[str] | None = None):
        self.power_rails = list(power_rails or [])
        self._queue: queue.Queue[tuple[float, str]] = queue.Queue()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.lines = 0
        self.error: str | None = None

    def start(self) -> None:
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run_safely, name=f'monitor-{self.name}',
                                        daemon=True)
        self._thread.start()

    def _run_safely(self) -> None:
        try:
            self._run()
        except Exception as exc:  # noqa: BLE001 - reported through `error` and diagnostics
            self.error = f'{type(exc).__name__}: {exc}'

    @abc.abstractmethod
    def _run(self) -> None:
        ...

    def _put(self, t: float, line: str) -> None:
        if line.strip() and not line.startswith('#'):
            self.lines += 1
            self._queue.put((t, line))

    def poll(self) -> list[Reading]:
        out = []
        for _ in range(self._queue.qsize()):  # what is there now: a fast producer cannot
            try:                              # keep this call from returning
                t, line = self._queue.get_nowait()
            except queue.Empty:
                break
            out.append(reading_from_sample(parse_line(line), t, self.power_rails))
        return out

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(2.0)
            self._thread = None

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()


class TegrastatsProcess(_LineSource):
    """`tegrastats --interval N` as a child process; stop() terminates it (then kills)."""

    name = 'tegrastats'

    def __init__(self, interval_ms: int = 100, executable: str = 'tegrastats',
                 power_rails: Sequence[str] | None = None):
        super().__init__(power_rails)
        if interval_ms <= 0:
            raise SourceError(f'tegrastats interval must be > 0 ms, not {interval_ms}')
        self.interval_ms = int(interval_ms)
        path = shutil.which(executable)
        if path is None:
            raise SourceError(f"'{executable}' not found on PATH: tegrastats ships with "
                              'JetPack (run on a Jetson, or pass a log with --logfile)')
        self.executable = path
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        if self.process is None:
            self.process = subprocess.Popen(
                [self.executable, '--interval', str(self.interval_ms)], stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL, text=True, bufsize=1)
        super().start()

    def _run(self) -> None:
        assert self.process is not None and self.process.stdout is not None
        for line in read_capped_lines(self.process.stdout):
            if self._stop.is_set():
                break
            self._put(time.time(), line)

    def stop(self) -> None:
        self._stop.set()
        proc, self.process = self.process, None
        if proc is not None:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(2.0)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(2.0)
            if proc.stdout is not None:
                proc.stdout.close()
        super().stop()

    def describe(self) -> str:
        return f'tegrastats child process ({self.executable} --interval {self.interval_ms})'


class LogFollow(_LineSource):
    """Follow a growing tegrastats log (`tegrastats --logfile F`): new lines as they come.

    Lines already in the file are skipped unless from_start; a truncated/rotated file is
    reopened from its beginning. Readings are stamped with the time they were read.
    """

    name = 'logfile'

    def __init__(self, path: str, from_start: bool = False, poll_s: float = 0.02,
                 power_rails: Sequence[str] | None = None):
        super().__init__(power_rails)
        self.path = os.fspath(path)
        self.from_start = from_start
        self.poll_s = poll_s
        if not os.path.exists(self.path):
            raise SourceError(f'tegrastats log {self.path} does not exist (start '
                              '`tegrastats --logfile` first, or check the path)')

    def _run(self) -> None:
        f = open(self.path, encoding='utf-8', errors='replace')
        try:
            if not self.from_start:
                f.seek(0, os.SEEK_END)
            partial = ''
            while not self._stop.is_set():
                chunk = f.readline(_MAX_LINE + 1)
                if chunk:
                    if len(partial) <= _MAX_LINE:      # beyond: dropped, parse_line says so
                        partial += chunk[:_MAX_LINE + 1 - len(partial)]
                    if chunk.endswith('\n'):
                        self._put(time.time(), partial)
                        partial = ''
                    continue
                try:
                    if os.path.getsize(self.path) < f.tell():
                        f.close()
                        f = open(self.path, encoding='utf-8', errors='replace')
                        partial = ''
                        continue
                except OSError:
                    pass
                self._stop.wait(self.poll_s)
        finally:
            f.close()

    def describe(self) -> str:
        return f'following tegrastats log {self.path}'


def read_log_lines(path: str) -> list[str]:
    """The tegrastats lines of a log file (blank lines and '#' comments skipped)."""
    try:
        with open(path, encoding='utf-8', errors='replace') as f:
            return [ln.rstrip('\n') for ln in read_capped_lines(f)
                    if ln.strip() and not ln.startswith('#')]
    except OSError as exc:
        raise SourceError(f'cannot read tegrastats log {path}: {exc.strerror}') from None


class LogReplay(_LineSource):
    """Replay a recorded tegrastats log at its own pace, `time_scale` times faster.

    The pace is `interval_ms` between lines when given, else the spacing of the lines'
    timestamps when every line has a distinct one, else `fallback_interval_ms` (the interval
    the log was recorded with: `tegrastats --interval 100` prints several lines per
    whole-second timestamp; default 1000 ms, tegrastats' own default). timebase 'wall' stamps each
    reading with the time it is emitted (so it lines up with live inference timing);
    'log' stamps line i with start_time + i * interval (deterministic, for tests and offline
    analysis). loop repeats the log forever.
    """

    name = 'replay'

    def __init__(self, path: str, interval_ms: float | None = None, time_scale: float = 1.0,
                 loop: bool = False, timebase: str = 'wall', start_time: float | None = None,
                 power_rails: Sequence[str] | None = None, fallback_interval_ms: float = 1000.0):
        super().__init__(power_rails)
        if time_scale <= 0:
            raise SourceError(f'replay time_scale must be > 0, not {time_scale}')
        if timebase not in ('wall', 'log'):
            raise SourceError(f"replay timebase must be 'wall' or 'log', not {timebase!r}")
        self.path = os.fspath(path)
        self.lines_in_log = read_log_lines(self.path)
        if not self.lines_in_log:
            raise SourceError(f'tegrastats log {self.path} has no lines to replay')
        self.offsets_s = _offsets(self.lines_in_log, interval_ms, fallback_interval_ms)
        self.time_scale = float(time_scale)
        self.loop = loop
        self.timebase = timebase
        self.start_time = start_time
        self.finished = threading.Event()

    def _run(self) -> None:
        period = (self.offsets_s[-1] + (self.offsets_s[1] if len(self.offsets_s) > 1 else 1.0))
        origin_wall = time.time()
        origin = self.start_time if self.start_time is not None else origin_wall
        rep = 0
        while not self._stop.is_set():
            for line, offset in zip(self.lines_in_log, self.offsets_s):
                log_t = rep * period + offset
                delay = origin_wall + log_t / self.time_scale - time.time()
                if delay < -0.5:
                    origin_wall -= delay  # far behind (slow consumer, busy CPU): slip, no burst
                    delay = 0.0
                if self._stop.wait(max(delay, 0.0)):
                    return
                self._put(time.time() if self.timebase == 'wall' else origin + log_t, line)
            rep += 1
            if not self.loop:
                break
        self.finished.set()

    def describe(self) -> str:
        return (f'replaying tegrastats log {self.path} ({len(self.lines_in_log)} lines, '
                f'x{self.time_scale:g}{", looped" if self.loop else ""})')


def _offsets(lines: list[str], interval_ms: float | None, fallback_ms: float) -> list[float]:
    if interval_ms:
        return [i * interval_ms / 1000.0 for i in range(len(lines))]
    stamps = [parse_line(ln).time_s for ln in lines]
    if (all(s is not None for s in stamps)
            and all(b > a for a, b in zip(stamps, stamps[1:]))):  # type: ignore[operator]
        return [s - stamps[0] for s in stamps]  # type: ignore[operator]
    return [i * fallback_ms / 1000.0 for i in range(len(lines))]


# -- other machines -----------------------------------------------------------------------------
class NvmlSource(PowerSource):
    """An NVIDIA GPU through NVML: power from the energy counter (or the power reading)."""

    name = 'nvml'
    has_power = True

    def __init__(self, index: int = 0):
        try:
            import pynvml
        except ImportError:
            raise SourceError('NVML: nvidia-ml-py is not installed (pip install '
                              'nvidia-ml-py)') from None
        try:
            pynvml.nvmlInit()
        except pynvml.NVMLError as exc:
            raise SourceError(f'NVML: no usable NVIDIA driver ({exc})') from None
        self.nvml = pynvml
        try:
            self.handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            self.device = str(pynvml.nvmlDeviceGetName(self.handle))
        except pynvml.NVMLError as exc:
            pynvml.nvmlShutdown()
            raise SourceError(f'NVML: GPU {index} not available ({exc})') from None
        self.index = index
        self._last_energy: tuple[float, float] | None = None

    def poll(self) -> list[Reading]:
        nv, h = self.nvml, self.handle
        now = time.time()
        power_w = None
        try:
            energy_mj = float(nv.nvmlDeviceGetTotalEnergyConsumption(h))
            if self._last_energy is not None and now > self._last_energy[0]:
                power_w = (energy_mj - self._last_energy[1]) / 1000.0 / (
                    now - self._last_energy[0])
            self._last_energy = (now, energy_mj)
        except nv.NVMLError:
            pass
        if power_w is None:
            try:
                power_w = nv.nvmlDeviceGetPowerUsage(h) / 1000.0
            except nv.NVMLError:
                power_w = None
        r = Reading(time_s=now, power_label=f'GPU{self.index} board power')
        if power_w is not None and _plausible(r, 'GPU power mW', power_w * 1000.0,
                                              'power_mw') is None:
            power_w = None
        r.power_w = power_w
        if power_w is not None:
            r.rails_w['GPU'] = power_w
        for attr, fn in (('gpu_percent', lambda: nv.nvmlDeviceGetUtilizationRates(h).gpu),
                         ('gpu_freq_mhz',
                          lambda: nv.nvmlDeviceGetClockInfo(h, nv.NVML_CLOCK_GRAPHICS))):
            try:
                setattr(r, attr, float(fn()))
            except nv.NVMLError:
                pass
        try:
            temp = _plausible(r, 'GPU temperature C', float(nv.nvmlDeviceGetTemperature(
                h, nv.NVML_TEMPERATURE_GPU)), 'temperature_c')
            if temp is not None:
                r.temperatures_c['GPU'] = temp
        except nv.NVMLError:
            pass
        try:
            reasons = nv.nvmlDeviceGetCurrentClocksEventReasons(h)
            thermal = (getattr(nv, 'nvmlClocksEventReasonSwThermalSlowdown', 0x20)
                       | getattr(nv, 'nvmlClocksEventReasonHwThermalSlowdown', 0x40))
            r.throttled = bool(reasons & thermal)
        except (nv.NVMLError, AttributeError):
            pass
        _add_proc(r)
        return [r]

    def stop(self) -> None:
        try:
            self.nvml.nvmlShutdown()
        except self.nvml.NVMLError:
            pass

    def describe(self) -> str:
        return f'NVML ({self.device}, GPU {self.index}): board power from the energy counter'


class RaplSource(PowerSource):
    """x86 package power from RAPL energy counters (`intel-rapl:N/energy_uj`, wrap-aware)."""

    name = 'rapl'
    has_power = True

    def __init__(self, root: str = '/sys/class/powercap'):
        self.root = root
        self.domains: dict[str, tuple[str, float]] = {}
        for zone in sorted(glob.glob(os.path.join(root, '*-rapl:*'))):
            if os.path.basename(zone).count(':') != 1:
                continue  # sub-domains (core, uncore, dram) are part of the package
            energy = os.path.join(zone, 'energy_uj')
            try:
                name = _read(os.path.join(zone, 'name')) or os.path.basename(zone)
                _read_float(energy)
                max_range = _read_float(os.path.join(zone, 'max_energy_range_uj'))
            except (OSError, ValueError):
                continue
            self.domains[f'{name}:{os.path.basename(zone)}'] = (energy, max_range)
        if not self.domains:
            why = ('absent' if not os.path.isdir(root) else
                   'has no readable *-rapl:N/energy_uj (root only on most kernels)')
            raise SourceError(f'RAPL: {root} {why}')
        self._last: dict[str, tuple[float, float]] = {}

    def poll(self) -> list[Reading]:
        now = time.time()
        r = Reading(time_s=now, power_label='+'.join(self.domains))
        total, complete = 0.0, True
        for name, (path, max_range) in self.domains.items():
            try:
                e = _read_float(path)
            except (OSError, ValueError):
                complete = False
                continue
            last = self._last.get(name)
            self._last[name] = (now, e)
            if last is None or now <= last[0]:
                complete = False
                continue
            de = e - last[1]
            if de < 0:
                de += max_range
            watts = _plausible(r, f'{name} mW', de / 1e6 / (now - last[0]) * 1000.0,
                               'power_mw')
            if watts is None:
                complete = False
                continue
            watts /= 1000.0
            r.rails_w[name] = watts
            total += watts
        r.power_w = total if complete and r.rails_w else None
        _add_proc(r)
        return [r]

    def describe(self) -> str:
        return f'RAPL energy counters ({", ".join(self.domains)})'


class ProcSource(PowerSource):
    """CPU load/clock, RAM and temperatures through psutil; no power measurement."""

    name = 'proc'
    has_power = False

    def __init__(self):
        try:
            import psutil
        except ImportError:
            raise SourceError('psutil is not installed (pip install psutil)') from None
        psutil.cpu_percent(percpu=True)  # prime: the first call has no interval to measure
        self._last = time.monotonic()

    def poll(self) -> list[Reading]:
        now = time.monotonic()
        if now - self._last < 0.02:
            return []  # psutil's CPU load over a few ms is meaningless (reads 0 %)
        self._last = now
        r = Reading(time_s=time.time())
        _add_proc(r, temperatures=True)
        return [r]

    def describe(self) -> str:
        return 'CPU/RAM from psutil (/proc); no power source'


def _add_proc(r: Reading, temperatures: bool = False) -> None:
    try:
        import psutil
    except ImportError:
        return
    loads = psutil.cpu_percent(percpu=True)
    r.cpu_percent = sum(loads) / len(loads) if loads else None
    try:
        freq = psutil.cpu_freq()
        r.cpu_freq_mhz = float(freq.current) if freq else None
    except (OSError, NotImplementedError, AttributeError):
        pass
    mem = psutil.virtual_memory()
    r.ram_used_mb = (mem.total - mem.available) / 2**20
    r.ram_total_mb = mem.total / 2**20
    if temperatures and hasattr(psutil, 'sensors_temperatures'):
        try:
            for chip, entries in psutil.sensors_temperatures().items():
                for i, entry in enumerate(entries):
                    label = entry.label or f'{chip}{i}'
                    value = _plausible(r, f'{label} C', float(entry.current), 'temperature_c')
                    if value is not None:
                        r.temperatures_c[label] = value
        except (OSError, RuntimeError):
            pass


def _read(path: str) -> str:
    with open(path) as f:
        return f.read().strip()


def _read_float(path: str) -> float:
    return float(_read(path))


def detect_source(kind: str = 'auto', *, interval_ms: int = 100, logfile: str = '',
                  time_scale: float = 1.0, loop: bool = False,
                  power_rails: Sequence[str] | None = None,
                  tegrastats: str = 'tegrastats', rapl_root: str = '/sys/class/powercap',
                  ) -> tuple[PowerSource, list[str]]:
    """(source, why each preferred source was not used).

    kind: auto | tegrastats | logfile (follow) | replay | nvml | rapl | proc. auto: replay
    `logfile` when given, else tegrastats, NVML, RAPL, then psutil (no power).
    """
    makers: dict[str, Callable[[], PowerSource]] = {
        'tegrastats': lambda: TegrastatsProcess(interval_ms, tegrastats, power_rails),
        'logfile': lambda: LogFollow(_need(logfile), power_rails=power_rails),
        'replay': lambda: LogReplay(_need(logfile), time_scale=time_scale, loop=loop,
                                    power_rails=power_rails, fallback_interval_ms=interval_ms),
        'nvml': NvmlSource,
        'rapl': lambda: RaplSource(rapl_root),
        'proc': ProcSource,
    }
    if kind != 'auto':
        if kind not in makers:
            raise SourceError(f"unknown power source {kind!r}: choose auto, "
                              f"{', '.join(makers)}")
        return makers[kind](), []
    order = (['replay'] if logfile else []) + ['tegrastats', 'nvml', 'rapl', 'proc']
    reasons: list[str] = []
    for name in order:
        try:
            return makers[name](), reasons
        except SourceError as exc:
            reasons.append(str(exc))
    raise SourceError('no source at all: ' + '; '.join(reasons))


def _need(logfile: str) -> str:
    if not logfile:
        raise SourceError('this source needs a tegrastats log: set logfile (--logfile FILE)')
    return logfile
