"""Values outside physical ranges are reported as unparsed, never passed on; line length is
capped, so a 50 MB line costs bounded time and memory."""
import io
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from qail_ros.monitor import sources
from qail_ros.monitor.tegrastats import MAX_LINE_CHARS, parse_line, read_capped_lines

ROOT = Path(__file__).resolve().parents[2]
GOOD = ('RAM 2020/7852MB (lfb 1164x4MB) CPU [9%@345,off] GR3D_FREQ 10%@1300 cpu@45.5C '
        'VDD_IN 3140/3208')


@pytest.mark.parametrize('field,where', [
    ('GPU@1000000000000000000000C', 'temperatures_c'),      # 1e21 C
    ('GPU@-100C', 'temperatures_c'),
    ('tj@50C/9000C', 'temperatures_c'),                     # current fine, average absurd
    ('VDD_GPU 99999999/12', 'rails'),                        # 100 kW
    ('GR3D2_FREQ 400%@1300', 'engines'),
    ('EMC_FREQ 2%@99999', 'engines'),
    ('MTS fg 150% bg 0%', 'mts_percent'),
])
def test_values_outside_physical_ranges_are_unparsed(field, where):
    s = parse_line(f'{GOOD} {field}')
    assert s.unparsed == [field]
    assert s.rails['VDD_IN'].cur_mw == 3140.0 and s.temperatures_c['cpu'] == 45.5
    value = getattr(s, where)
    assert value in ({'cpu': 45.5}, {'VDD_IN': s.rails['VDD_IN']}, None) or \
        set(value) == {'GR3D'}
    assert 'GPU' not in s.temperatures_c and 'tj' not in s.temperatures_c


def test_implausible_cpu_and_memory_fields_are_unparsed():
    s = parse_line('RAM 9000/7852MB CPU [250%@345,1%@345] VDD_IN 3140/3208')
    assert s.unparsed == ['RAM 9000/7852MB', 'CPU [250%@345,1%@345]']
    assert s.ram_mb is None and s.cpu == [] and s.to_json()['rails']['VDD_IN']['cur_mw'] == 3140


def test_long_line_is_cut_and_said():
    line = GOOD + ' ' + 'x' * (MAX_LINE_CHARS * 3)
    s = parse_line(line)
    assert s.rails['VDD_IN'].cur_mw == 3140.0
    assert s.unparsed == [f'<line longer than {MAX_LINE_CHARS} characters: the rest was not '
                          'parsed>']
    # No token of the cut part is half-parsed: 'VDD_IN 3140/32|08' must not become 32 mW.
    cut_inside = 'y' * (MAX_LINE_CHARS - len('VDD_IN 3140/32')) + ' VDD_IN 3140/3208'
    assert 'VDD_IN' not in parse_line(cut_inside).rails


def test_read_capped_lines_skips_the_rest_of_a_long_line():
    stream = io.StringIO('a 1\n' + 'z' * 200_000 + '\n' + GOOD + '\n')
    lines = list(read_capped_lines(stream, max_chars=100))
    assert lines[0] == 'a 1\n' and len(lines[1]) == 101 and lines[2] == GOOD + '\n'


def test_parse_of_a_50_mb_line_is_bounded(tmp_path):
    log = tmp_path / 'huge.log'
    with open(log, 'w') as f:
        f.write(GOOD + '\n')
        f.write('Z' * (50 * 2**20) + '\n')
        f.write(GOOD.replace('3140', '4000') + '\n')
    # Peak memory from VmHWM: ru_maxrss would include the forked pytest process's own peak.
    code = ('import re, sys, time; from qail_ros.cli import main; t = time.perf_counter(); '
            'rc = main(["monitor", "parse", sys.argv[1], "--json"]); '
            'hwm = re.search(r"VmHWM:\\s+(\\d+)", open("/proc/self/status").read())[1]; '
            'print("STATS", time.perf_counter() - t, hwm, file=sys.stderr); sys.exit(rc)')
    done = subprocess.run([sys.executable, '-c', code, str(log)], capture_output=True,
                          text=True, timeout=120, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    objects = [json.loads(line) for line in done.stdout.splitlines()]
    assert [o['rails']['VDD_IN']['cur_mw'] for o in objects if o['rails']] == [3140, 4000]
    assert any('longer than' in u for o in objects for u in o['unparsed'])
    seconds, max_rss_kb = done.stderr.split('STATS')[1].split()
    # Generous bounds (a shared CI machine): the issue saw 6 s and 243 MB for this line.
    assert float(seconds) < 3.0 and int(max_rss_kb) < 200_000, done.stderr


def test_log_replay_and_rapl_never_pass_implausible_values(tmp_path, monkeypatch):
    log = tmp_path / 't.log'
    log.write_text(f'{GOOD} GPU@1000000000000000000000C\n' + 'Q' * 100_000 + '\n')
    lines = sources.read_log_lines(str(log))
    assert len(lines) == 2 and len(lines[1]) <= MAX_LINE_CHARS + 1
    reading = sources.reading_from_sample(parse_line(lines[0]), time.time())
    assert 'GPU' not in reading.temperatures_c
    assert 'GPU@1000000000000000000000C' in reading.unparsed
    r = sources.Reading(time_s=0.0)
    assert sources._plausible(r, 'package mW', 2e12, 'power_mw') is None
    assert r.unparsed == ['package mW=2e+12 (outside 0..500000)']
    assert sources._plausible(r, 'package mW', 15000.0, 'power_mw') == 15000.0
