"""Parser of `tegrastats` lines (every Jetson from Nano/TX2 on JetPack 4 to Orin on JetPack 6+).

    sample = parse_line('RAM 2020/7852MB (lfb 1164x4MB) CPU [9%@345,off] ... VDD_IN 3140/3208')
    sample.rails['VDD_IN'].cur_mw    # 3140.0 (mW, whether or not the line prints 'mW')
    sample.to_json()                  # the `qail-ros monitor parse --json` object

A line is scanned left to right; at each position the first field pattern that matches wins:

  timestamp      `MM-DD-YYYY HH:MM:SS` at the start (`tegrastats --logfile`, JetPack 5+)
  RAM / SWAP     `RAM 4722/7844MB (lfb 1x512kB)`, `SWAP 149/1024MB (cached 7MB)`, sizes in
                 kB/MB/GB (converted to MB); `IRAM 0/252kB(lfb 252kB)` (Nano/TX1)
  CPU            `CPU [55%@2035,off,...]` (per-core load@MHz, `off` = core powered down) or the
                 old `cpu [17%,13%]@408` (one frequency for all cores)
  MTS            `MTS fg 0% bg 0%` (Xavier/TX2)
  rails          `NAME cur/avg` (JetPack 4, no unit, mW), `NAME curmW/avgmW` (JetPack 5/6) and
                 three values `NAME a/b/c` (the third kept as max_mw; see docs/monitor.md)
  engines        `EMC_FREQ 2%@1866`, `EMC_FREQ 0%`, `EMC_FREQ @2133`, `GR3D_FREQ 10%@1300`,
                 `GR3D_FREQ 0%@[305]`, `GR3D_FREQ 12%@[1300,1300]`, `GR3D_FREQ @[1000,1000]`,
                 `NVENC 716` (MHz), `NVDEC 40%@115`, `NVJPG off`, `VIC_FREQ 729`, `APE 150`
                 (a `_FREQ` suffix is dropped: GR3D_FREQ -> GR3D)
  temperatures   `GPU@41C`, `cpu@65.562C`, `cpu@52.968C/52.968C` (current/average); a -256C
                 value means "sensor absent" (a powered-down CV/GPU cluster): left out of
                 temperatures_c and listed in absent_sensors.

Anything else is kept, token by token, in `unparsed`: a new JetPack field never crashes the
monitor, and shows up in its diagnostics. So is a field whose value is outside its physical
range (PLAUSIBLE: a temperature of 1e21 C, a 10 MW rail, a 400 % load): such a value is never
passed on as a measurement. A line is read and parsed up to MAX_LINE_CHARS characters
(`read_capped_lines`); the rest is skipped in bounded chunks and reported in `unparsed`, so a
50 MB line costs bounded time and memory.
"""
from __future__ import annotations

import dataclasses
import datetime as _dt
import re
from typing import Any, Iterable, Iterator

__all__ = ['Rail', 'Engine', 'CpuCore', 'TegrastatsSample', 'parse_line', 'parse_lines',
           'ABSENT_TEMPERATURE_C', 'INPUT_RAILS', 'total_power_mw', 'MAX_LINE_CHARS',
           'PLAUSIBLE', 'read_capped_lines']

#: Longest line parsed (published tegrastats lines are under 1000 characters).
MAX_LINE_CHARS = 8192

#: Physical ranges (inclusive); a value outside is reported as unparsed, not passed on.
PLAUSIBLE = {
    'temperature_c': (-60.0, 150.0),    # silicon sensors: -40 .. 125 C rated, some margin
    'power_mw': (0.0, 500_000.0),       # a rail or module input: under 500 W
    'percent': (0.0, 100.0),            # loads
    'freq_mhz': (0.0, 10_000.0),        # clocks
    'memory_mb': (0.0, 16.0 * 2**20),   # RAM / swap / IRAM sizes: under 16 TB
}


def _plausible(kind: str, *values: float | None) -> bool:
    low, high = PLAUSIBLE[kind]
    return all(v is None or low <= v <= high for v in values)


#: tegrastats prints this for a thermal zone that cannot be read (e.g. the GPU rail-gated).
ABSENT_TEMPERATURE_C = -256.0

#: Rails that measure the whole module input, in order of preference (Orin NX/Nano, Xavier NX,
#: TX2: VDD_IN; Nano: POM_5V_IN; Thor: VIN). Boards without one (AGX Orin, AGX Xavier) get the
#: sum of their rails (see total_power_mw).
INPUT_RAILS = ('VDD_IN', 'POM_5V_IN', 'VIN')

_UNIT_MB = {'k': 1.0 / 1024.0, 'K': 1.0 / 1024.0, 'M': 1.0, 'G': 1024.0}


@dataclasses.dataclass
class Rail:
    """One power rail: instantaneous and average power in milliwatts (max_mw: a third value)."""

    cur_mw: float
    avg_mw: float | None = None
    max_mw: float | None = None

    @property
    def power_w(self) -> float:
        return self.cur_mw / 1000.0


@dataclasses.dataclass
class Engine:
    """A hardware engine (EMC, GR3D = GPU, NVENC, NVDEC, VIC, APE, ...).

    load_percent is None when the line prints only a frequency; freq_mhz is the highest of
    `freqs_mhz` (one per GPC for `GR3D_FREQ x%@[a,b]`); off is True for `NAME off`.
    """

    load_percent: float | None = None
    freq_mhz: float | None = None
    freqs_mhz: tuple[float, ...] = ()
    off: bool = False


@dataclasses.dataclass
class CpuCore:
    """One CPU core; both None when tegrastats prints `off` (core powered down)."""

    load_percent: float | None
    freq_mhz: float | None

    @property
    def online(self) -> bool:
        return self.load_percent is not None


@dataclasses.dataclass
class TegrastatsSample:
    """Everything one tegrastats line says, in the units named by each field."""

    line: str
    timestamp: str | None = None                 # ISO 8601 local time, when the line has one
    ram_mb: tuple[float, float] | None = None    # (used, total)
    lfb: tuple[int, float] | None = None         # (number of blocks, block size in MB)
    swap_mb: tuple[float, float] | None = None   # (used, total)
    swap_cached_mb: float | None = None
    iram_kb: tuple[float, float] | None = None   # (used, total)
    cpu: list[CpuCore] = dataclasses.field(default_factory=list)
    engines: dict[str, Engine] = dataclasses.field(default_factory=dict)
    mts_percent: tuple[float, float] | None = None  # (foreground, background)
    temperatures_c: dict[str, float] = dataclasses.field(default_factory=dict)
    temperatures_avg_c: dict[str, float] = dataclasses.field(default_factory=dict)
    absent_sensors: list[str] = dataclasses.field(default_factory=list)
    rails: dict[str, Rail] = dataclasses.field(default_factory=dict)
    unparsed: list[str] = dataclasses.field(default_factory=list)

    @property
    def gpu(self) -> Engine | None:
        """The integrated GPU (GR3D); GR3D2 (second GPC on Orin JetPack 5.0) is folded in."""
        gpu = self.engines.get('GR3D')
        second = self.engines.get('GR3D2')
        if gpu is not None and second is not None and second.freq_mhz is not None:
            freqs = gpu.freqs_mhz + second.freqs_mhz
            return Engine(gpu.load_percent, max(freqs) if freqs else gpu.freq_mhz, freqs,
                          gpu.off)
        return gpu

    @property
    def time_s(self) -> float | None:
        """The timestamp as seconds since the epoch (local time), when the line has one."""
        if self.timestamp is None:
            return None
        return _dt.datetime.fromisoformat(self.timestamp).timestamp()

    def cpu_load_percent(self) -> float | None:
        """Mean load of the online cores."""
        loads = [c.load_percent for c in self.cpu if c.load_percent is not None]
        return sum(loads) / len(loads) if loads else None

    def to_json(self) -> dict[str, Any]:
        """The object `qail-ros monitor parse --json` prints (keys documented in the issue)."""
        gpu = self.gpu
        out: dict[str, Any] = {
            'rails': {name: {'cur_mw': r.cur_mw, 'avg_mw': r.avg_mw}
                      for name, r in self.rails.items()},
            'cpu': [{'load_percent': c.load_percent, 'freq_mhz': c.freq_mhz} for c in self.cpu],
            'gpu': None if gpu is None else {'load_percent': gpu.load_percent,
                                             'freq_mhz': gpu.freq_mhz},
            'ram_mb': None if self.ram_mb is None else {'used': self.ram_mb[0],
                                                        'total': self.ram_mb[1]},
            'swap_mb': None if self.swap_mb is None else {'used': self.swap_mb[0],
                                                          'total': self.swap_mb[1]},
            'temperatures_c': dict(self.temperatures_c),
        }
        if self.timestamp is not None:
            out['timestamp'] = self.timestamp
        out['unparsed'] = list(self.unparsed)
        return out


# -- patterns ---------------------------------------------------------------------------------
_NUM = r'-?\d+(?:\.\d+)?'
_END = r'(?=\s|$)'
_TIMESTAMP = re.compile(r'(\d{2})-(\d{2})-(\d{4}) (\d{2}):(\d{2}):(\d{2})' + _END)
_RAM = re.compile(r'RAM (\d+)/(\d+)([kKMG])B(?: ?\(lfb (\d+)x(\d+)([kKMG])B\))?' + _END)
_SWAP = re.compile(r'SWAP (\d+)/(\d+)([kKMG])B(?: ?\(cached (\d+)([kKMG])B\))?' + _END)
_IRAM = re.compile(r'IRAM (\d+)/(\d+)([kKMG])B ?\(lfb (\d+)([kKMG])B\)' + _END)
_CPU = re.compile(r'CPU \[([^\]]*)\](?:@(\d+))?' + _END, re.IGNORECASE)
_MTS = re.compile(r'MTS fg (\d+)% bg (\d+)%' + _END)
_RAIL = re.compile(r'([A-Za-z][A-Za-z0-9_]*) (\d+(?:\.\d+)?)(?:mW)?/(\d+(?:\.\d+)?)(?:mW)?'
                   r'(?:/(\d+(?:\.\d+)?)(?:mW)?)?' + _END)
_ENGINE = re.compile(r'([A-Z][A-Z0-9_]*) (?:(off)|(?:(\d+)%)?@\[([\d,]*)\]|(\d+)%@(\d+)|@(\d+)'
                     r'|(\d+)%|(\d+))' + _END)
_TEMP = re.compile(r'([A-Za-z][\w-]*)@(' + _NUM + r')C(?:/(' + _NUM + r')C)?' + _END)
_CORE = re.compile(r'(\d+)%(?:@(\d+))?$')


def _mb(value: str, unit: str) -> float:
    return float(value) * _UNIT_MB[unit]


#: RAM and SWAP: pattern, field of (used, total) MB, field of the optional detail, its value.
_MEMORY = ((_RAM, 'ram_mb', 'lfb', lambda m: (int(m[4]), _mb(m[5], m[6]))),
           (_SWAP, 'swap_mb', 'swap_cached_mb', lambda m: _mb(m[4], m[5])))


def parse_line(line: str) -> TegrastatsSample:
    """Parse one tegrastats line; never raises on content (unknown tokens go to `unparsed`).

    Only the first MAX_LINE_CHARS characters of a longer line are parsed (up to the last
    whole token); the cut is reported in `unparsed`.
    """
    cut = len(line) > MAX_LINE_CHARS
    if cut:
        head = line[:MAX_LINE_CHARS]
        space = max(head.rfind(' '), head.rfind('\t'))
        line = head[:space] if space > 0 else ''
    text = line.strip()
    sample = TegrastatsSample(line=text)
    pos, n = 0, len(text)
    first = True
    while pos < n:
        if text[pos].isspace():
            pos += 1
            continue
        if first:
            first = False
            m = _TIMESTAMP.match(text, pos)
            if m:
                mo, d, y, hh, mm, ss = (int(g) for g in m.groups())
                try:
                    sample.timestamp = _dt.datetime(y, mo, d, hh, mm, ss).isoformat()
                    pos = m.end()
                    continue
                except ValueError:
                    pass
        pos = _field(text, pos, sample)
    if cut:  # after the tokens of the part that was parsed
        sample.unparsed.append(f'<line longer than {MAX_LINE_CHARS} characters: the rest was '
                               'not parsed>')
    return sample


def read_capped_lines(f, max_chars: int = MAX_LINE_CHARS) -> Iterator[str]:
    """The lines of a text stream, each at most `max_chars` + 1 characters: the rest of a
    longer line is read in bounded chunks and dropped (parse_line reports the cut)."""
    while True:
        line = f.readline(max_chars + 1)
        if not line:
            return
        if len(line) > max_chars and not line.endswith('\n'):
            while True:                       # skip the rest of this line, 64 k at a time
                rest = f.readline(1 << 16)
                if not rest or rest.endswith('\n'):
                    break
        yield line


def _field(text: str, pos: int, s: TegrastatsSample) -> int:
    """Parse the field at `pos` into `s`; returns the position after it."""
    def implausible(m: re.Match) -> int:
        s.unparsed.append(text[pos:m.end()])
        return m.end()

    for pattern, field, detail_field, detail in _MEMORY:
        m = pattern.match(text, pos)
        if m:
            used, total = _mb(m[1], m[3]), _mb(m[2], m[3])
            if not _plausible('memory_mb', used, total) or used > total:
                return implausible(m)
            setattr(s, field, (used, total))
            if m[4] is not None:
                setattr(s, detail_field, detail(m))
            return m.end()
    m = _IRAM.match(text, pos)
    if m:
        if not _plausible('memory_mb', _mb(m[1], m[3]), _mb(m[2], m[3])):
            return implausible(m)
        s.iram_kb = (_mb(m[1], m[3]) * 1024.0, _mb(m[2], m[3]) * 1024.0)
        return m.end()
    m = _CPU.match(text, pos)
    if m:
        cores = _cores(m[1], m[2])
        if cores is not None:
            if not all(_plausible('percent', c.load_percent)
                       and _plausible('freq_mhz', c.freq_mhz) for c in cores):
                return implausible(m)
            s.cpu = cores
            return m.end()
    m = _MTS.match(text, pos)
    if m:
        if not _plausible('percent', float(m[1]), float(m[2])):
            return implausible(m)
        s.mts_percent = (float(m[1]), float(m[2]))
        return m.end()
    m = _RAIL.match(text, pos)
    if m:
        rail = Rail(float(m[2]), float(m[3]), float(m[4]) if m[4] is not None else None)
        if not _plausible('power_mw', rail.cur_mw, rail.avg_mw, rail.max_mw):
            return implausible(m)
        s.rails[m[1]] = rail
        return m.end()
    m = _ENGINE.match(text, pos)
    if m:
        engine = _engine(m)
        if not (_plausible('percent', engine.load_percent)
                and _plausible('freq_mhz', engine.freq_mhz, *engine.freqs_mhz)):
            return implausible(m)
        s.engines[_engine_name(m[1])] = engine
        return m.end()
    m = _TEMP.match(text, pos)
    if m:
        value = float(m[2])
        avg = float(m[3]) if m[3] is not None else None
        if value <= ABSENT_TEMPERATURE_C:
            s.absent_sensors.append(m[1])
        elif not _plausible('temperature_c', value, avg):
            return implausible(m)
        else:
            s.temperatures_c[m[1]] = value
            if avg is not None:
                s.temperatures_avg_c[m[1]] = avg
        return m.end()
    end = pos
    while end < len(text) and not text[end].isspace():
        end += 1
    s.unparsed.append(text[pos:end])
    return end


def _cores(body: str, shared_freq: str | None) -> list[CpuCore] | None:
    cores = []
    for item in body.split(','):
        item = item.strip()
        if item == 'off':
            cores.append(CpuCore(None, None))
            continue
        m = _CORE.match(item)
        if not m:
            return None
        freq = m[2] if m[2] is not None else shared_freq
        cores.append(CpuCore(float(m[1]), float(freq) if freq is not None else None))
    return cores


def _engine_name(name: str) -> str:
    return name[:-5] if name.endswith('_FREQ') else name


def _engine(m: re.Match) -> Engine:
    off, arr_load, arr, load, freq, bare_at, only_load, only_freq = m.groups()[1:]
    if off:
        return Engine(off=True)
    if arr is not None:
        freqs = tuple(float(f) for f in arr.split(',') if f)
        return Engine(float(arr_load) if arr_load is not None else None,
                      max(freqs) if freqs else None, freqs)
    if load is not None:
        return Engine(float(load), float(freq), (float(freq),))
    if bare_at is not None:
        return Engine(None, float(bare_at), (float(bare_at),))
    if only_load is not None:
        return Engine(float(only_load))
    return Engine(None, float(only_freq), (float(only_freq),))


def parse_lines(lines: Iterable[str]) -> Iterator[TegrastatsSample]:
    """Parse every non-empty line."""
    for line in lines:
        if line.strip():
            yield parse_line(line)


def total_power_mw(rails: dict[str, Rail], names: Iterable[str] | None = None
                   ) -> tuple[float | None, str]:
    """(power in mW, which rails it is) of a sample's rails.

    `names` given: the sum of those rails (None if none is printed). Otherwise the module input
    rail (INPUT_RAILS) when the board has one, else the sum of every rail except `NC` (not
    connected) ones, as AGX Orin / AGX Xavier have no input rail in tegrastats.
    """
    if names:
        chosen = [n for n in names if n in rails]
        if not chosen:
            return None, '+'.join(names)
        return sum(rails[n].cur_mw for n in chosen), '+'.join(chosen)
    for name in INPUT_RAILS:
        if name in rails:
            return rails[name].cur_mw, name
    chosen = [n for n in rails if n != 'NC']
    if not chosen:
        return None, ''
    return sum(rails[n].cur_mw for n in chosen), '+'.join(chosen)
