"""Power sources: a real `tegrastats` child process (a fake script on PATH printing recorded
lines), a followed log file, a paced replay, RAPL counters in a fake sysfs tree, psutil, and
the automatic choice that says why it skipped each source."""
import os
import stat
import sys
import time

import pytest

from qail_ros.monitor.sources import (LogFollow, LogReplay, ProcSource, RaplSource,
                                      SourceError, TegrastatsProcess, detect_source)

DATA = os.path.join(os.path.dirname(__file__), 'data')
REPLAY = os.path.join(DATA, 'orin_nx_replay.log')
NANO = ('RAM 1180/3965MB (lfb 1x2MB) SWAP 149/1024MB (cached 7MB) IRAM 0/252kB(lfb 252kB) '
        'CPU [30%@1036,33%@1036,28%@1036,26%@1036] EMC_FREQ 10%@1600 GR3D_FREQ 0%@76 NVENC 716 '
        'NVDEC 716 APE 25 PLL@57C CPU@60.5C PMIC@100C GPU@59C AO@65C thermal@59.75C '
        'POM_5V_IN 4520/4680 POM_5V_GPU 0/0 POM_5V_CPU 1078/1205')


def _wait(cond, timeout=5.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.01)
    return False


@pytest.fixture
def fake_tegrastats(tmp_path, monkeypatch):
    """A `tegrastats` on PATH that prints recorded lines every --interval ms until killed, and
    writes its pid and arguments so the test can check how it was started and stopped."""
    script = tmp_path / 'bin' / 'tegrastats'
    script.parent.mkdir()
    script.write_text(f'''#!{sys.executable}
import os, sys, time
args = sys.argv[1:]
open({str(tmp_path / 'args')!r}, 'w').write(' '.join(args) + '\\n' + str(os.getpid()))
interval = int(args[args.index('--interval') + 1]) / 1000.0
lines = [l for l in open({REPLAY!r}) if l.strip()]
i = 0
while True:
    sys.stdout.write(lines[i % len(lines)])
    sys.stdout.flush()
    i += 1
    time.sleep(interval)
''')
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv('PATH', f'{script.parent}{os.pathsep}{os.environ["PATH"]}')
    return tmp_path


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f'/proc/{pid}/stat') as f:       # a zombie is not alive
        return f.read().split(')')[-1].split()[0] != 'Z'


def test_tegrastats_child_process_runs_and_stops_cleanly(fake_tegrastats):
    src = TegrastatsProcess(interval_ms=20)
    src.start()
    try:
        got = []
        assert _wait(lambda: got.extend(src.poll()) or len(got) >= 5), 'no lines read'
        args, pid = (fake_tegrastats / 'args').read_text().split('\n')
        assert args == '--interval 20'
        r = got[0]
        assert r.power_w == pytest.approx(4.0) and r.power_label == 'VDD_IN'
        assert r.rails_w == pytest.approx({'VDD_IN': 4.0, 'VDD_CPU_GPU_CV': 1.0, 'VDD_SOC': 1.5})
        assert r.gpu_percent == 0.0 and r.gpu_freq_mhz == 305.0
        assert r.ram_used_mb == 6982.0 and r.temperatures_c['tj'] == 51.562
        assert any(x.power_w == pytest.approx(9.0) for x in got)
        assert all(abs(x.time_s - time.time()) < 5 for x in got)
        assert 'tegrastats --interval 20' in src.describe()
    finally:
        src.stop()
    assert not _alive(int(pid)), 'tegrastats child still running after stop()'
    assert src.process is None and not src.running


def test_tegrastats_missing_says_how_to_fix(monkeypatch):
    monkeypatch.setenv('PATH', '/nonexistent')
    with pytest.raises(SourceError, match='not found on PATH.*JetPack'):
        TegrastatsProcess()


def test_logfile_follow_reads_only_new_lines_and_survives_truncation(tmp_path):
    log = tmp_path / 'tegra.log'
    log.write_text(NANO + '\n')                      # already there: skipped
    src = LogFollow(str(log), poll_s=0.005)
    src.start()
    try:
        time.sleep(0.05)
        with open(log, 'a') as f:
            f.write(NANO.replace('POM_5V_IN 4520', 'POM_5V_IN 6000') + '\n')
            f.write(NANO.replace('POM_5V_IN 4520', 'POM_5V_IN 6100')[:40])   # partial line
            f.flush()
        got = []
        assert _wait(lambda: got.extend(src.poll()) or len(got) >= 1)
        assert [r.power_w for r in got] == [pytest.approx(6.0)]
        with open(log, 'a') as f:
            f.write(NANO.replace('POM_5V_IN 4520', 'POM_5V_IN 6100')[40:] + '\n')
        assert _wait(lambda: got.extend(src.poll()) or len(got) >= 2)
        assert got[1].power_w == pytest.approx(6.1)
        log.write_text(NANO.replace('POM_5V_IN 4520', 'POM_5V_IN 7000') + '\n')  # rotated
        assert _wait(lambda: got.extend(src.poll()) or len(got) >= 3)
        assert got[2].power_w == pytest.approx(7.0)
    finally:
        src.stop()
    assert not src.running


def test_logfile_missing():
    with pytest.raises(SourceError, match='does not exist'):
        LogFollow('/nonexistent/tegra.log')


def test_replay_keeps_its_own_pace_scaled():
    # 8 lines, 100 ms apart in the log; x2 -> 50 ms apart on the wall clock
    src = LogReplay(REPLAY, interval_ms=100, time_scale=2.0)
    t0 = time.time()
    src.start()
    assert src.finished.wait(5.0)
    got = src.poll()
    src.stop()
    assert len(got) == 8
    span = got[-1].time_s - got[0].time_s
    assert 7 * 0.05 - 0.005 <= span <= 7 * 0.05 + 0.25   # never early; late only if CPU-starved
    assert all(b.time_s >= a.time_s for a, b in zip(got, got[1:]))
    assert got[0].time_s - t0 < 0.25
    assert [r.power_w for r in got] == pytest.approx([4, 4, 9, 9, 9, 4, 4, 4])


def test_replay_log_timebase_and_loop():
    src = LogReplay(REPLAY, interval_ms=125, time_scale=1000.0, loop=True, timebase='log',
                    start_time=1000.0)
    src.start()
    got = []
    assert _wait(lambda: got.extend(src.poll()) or len(got) >= 20)
    src.stop()
    assert [r.time_s for r in got[:10]] == [1000.0 + 0.125 * i for i in range(10)]
    assert [r.power_w for r in got[8:11]] == pytest.approx([4, 4, 9])   # looped


def test_replay_pace_from_timestamps_or_recording_interval(tmp_path):
    assert LogReplay(REPLAY, fallback_interval_ms=100).offsets_s[:3] == pytest.approx(
        [0.0, 0.1, 0.2])           # same whole-second stamp on every line: use the interval
    log = tmp_path / 'stamped.log'
    log.write_text('01-01-2025 00:00:00 RAM 1/2MB\n01-01-2025 00:00:02 RAM 1/2MB\n')
    assert LogReplay(str(log)).offsets_s == [0.0, 2.0]


def test_replay_rejects_bad_options(tmp_path):
    with pytest.raises(SourceError, match='time_scale'):
        LogReplay(REPLAY, time_scale=0)
    with pytest.raises(SourceError, match='timebase'):
        LogReplay(REPLAY, timebase='x')
    empty = tmp_path / 'empty.log'
    empty.write_text('\n# only a comment\n')
    with pytest.raises(SourceError, match='no lines'):
        LogReplay(str(empty))


def _rapl_tree(root, energy_uj: int, max_uj: int = 262143328850):
    zone = root / 'intel-rapl:0'
    zone.mkdir(parents=True, exist_ok=True)
    (zone / 'name').write_text('package-0\n')
    (zone / 'energy_uj').write_text(f'{energy_uj}\n')
    (zone / 'max_energy_range_uj').write_text(f'{max_uj}\n')
    sub = root / 'intel-rapl:0:0'                      # core sub-domain: not added again
    sub.mkdir(exist_ok=True)
    (sub / 'name').write_text('core\n')
    (sub / 'energy_uj').write_text('0\n')
    (sub / 'max_energy_range_uj').write_text(f'{max_uj}\n')
    return zone


def test_rapl_power_from_energy_counter_with_wraparound(tmp_path, monkeypatch):
    zone = _rapl_tree(tmp_path, 1_000_000, max_uj=10_000_000)
    clock = iter([100.0, 102.0, 103.0])
    monkeypatch.setattr('qail_ros.monitor.sources.time.time', lambda: next(clock))
    src = RaplSource(str(tmp_path))
    assert list(src.domains) == ['package-0:intel-rapl:0']
    assert src.poll()[0].power_w is None                      # first read: no interval yet
    (zone / 'energy_uj').write_text('3100000\n')    # +2.1 J in 2 s
    r = src.poll()[0]
    assert r.power_w == pytest.approx(1.05)
    (zone / 'energy_uj').write_text('100000\n')               # wrapped: +7_000_000 uJ in 1 s
    assert src.poll()[0].power_w == pytest.approx(7.0)


def test_rapl_absent_is_explained(tmp_path):
    with pytest.raises(SourceError, match='RAPL: .* absent'):
        RaplSource(str(tmp_path / 'none'))
    (tmp_path / 'empty').mkdir()
    with pytest.raises(SourceError, match='no readable'):
        RaplSource(str(tmp_path / 'empty'))


def test_proc_source_has_no_power_but_cpu_and_ram():
    src = ProcSource()
    time.sleep(0.03)
    r = src.poll()[0]
    assert src.poll() == []          # polled again within 20 ms: no meaningless 0 % reading
    assert r.power_w is None and not src.has_power
    assert 0.0 <= r.cpu_percent <= 100.0
    assert 0 < r.ram_used_mb < r.ram_total_mb


def test_auto_detection_on_this_kind_of_machine(monkeypatch, tmp_path):
    monkeypatch.setenv('PATH', str(tmp_path))     # no tegrastats
    src, reasons = detect_source('auto', rapl_root=str(tmp_path / 'powercap'))
    assert src.name in ('nvml', 'proc')
    assert any('tegrastats' in r for r in reasons)
    if src.name == 'proc':
        assert any(r.startswith('NVML') for r in reasons)
        assert any(r.startswith('RAPL') for r in reasons)


def test_auto_prefers_tegrastats_then_a_given_log(fake_tegrastats):
    src, reasons = detect_source('auto')
    assert src.name == 'tegrastats' and reasons == []
    src, _ = detect_source('auto', logfile=REPLAY)
    assert src.name == 'replay'


def test_explicit_kinds_and_errors():
    with pytest.raises(SourceError, match='unknown power source'):
        detect_source('battery')
    with pytest.raises(SourceError, match='needs a tegrastats log'):
        detect_source('replay')
    src, _ = detect_source('proc')
    assert src.name == 'proc'


def test_nvml_without_a_gpu_explains(monkeypatch):
    from qail_ros.monitor.sources import NvmlSource
    try:
        src = NvmlSource()
    except SourceError as exc:
        assert str(exc).startswith('NVML:')
    else:  # a machine with an NVIDIA GPU
        r = src.poll()[0]
        src.stop()
        assert r.gpu_percent is not None
