"""`qail-ros monitor`: parse --json, the report from recorded sessions, the live view over a
replayed log, the bench registration, and lean imports."""
import json
import os
import subprocess
import sys

import pytest

from qail_ros.cli import main as cli_main
from qail_ros.monitor.report import SessionRecorder, load_session, session_stats

DATA = os.path.join(os.path.dirname(__file__), 'data')
ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), '..', '..'))


def test_parse_json_prints_one_object_per_line(capsys):
    assert cli_main(['monitor', 'parse', os.path.join(DATA, 'formats.txt'), '--json']) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 8                                   # comment lines skipped
    objs = [json.loads(line) for line in out]
    assert objs[0]['rails']['VIN_SYS_5V0'] == {'cur_mw': 4025.0, 'avg_mw': 4025.0}
    assert objs[0]['timestamp'] == '2025-04-11T10:36:27'
    assert objs[3]['rails']['POM_5V_IN'] == {'cur_mw': 4520.0, 'avg_mw': 4680.0}  # no units
    assert objs[5]['cpu'][1] == {'load_percent': None, 'freq_mhz': None}
    assert objs[1]['gpu'] == {'load_percent': 84.0, 'freq_mhz': 713.0}
    assert all(o['unparsed'] == [] for o in objs)


def test_parse_reports_unparsed_tokens_and_reads_stdin():
    proc = subprocess.run(
        [sys.executable, '-c', 'import sys; from qail_ros.cli import main; sys.exit(main())',
         'monitor', 'parse', '-', '--json'], input='RAM 1/2MB foo=1 bar VDD_IN 1/1\n',
        capture_output=True, text=True, cwd=ROOT, env={**os.environ, 'PYTHONPATH': ROOT},
        timeout=60)
    assert proc.returncode == 0, proc.stderr
    obj = json.loads(proc.stdout)
    assert obj['unparsed'] == ['foo=1', 'bar'] and obj['ram_mb'] == {'used': 1.0, 'total': 2.0}


def test_parse_missing_file_is_a_clear_error(capsys):
    assert cli_main(['monitor', 'parse', '/nonexistent.log']) == 2
    assert 'cannot read /nonexistent.log' in capsys.readouterr().err


def _session(path, label, latency_ms, power_w):
    rec = SessionRecorder(str(path), label, source='test')
    for i in range(21):
        t = 100.0 + i * 0.1
        rec.reading(t, power_w(t), 50.0, None, 40.0, False)
    for i in range(10):
        start = 100.05 + i * 0.2
        rec.inference('/p/policy_timing', start, start + latency_ms / 1e3, latency_ms)
    rec.close()


def test_report_compares_sessions(tmp_path, capsys):
    # FP32: 10 W during each 50 ms window, 5 W idle; INT8: 20 ms windows at 8 W, 5 W idle.
    _session(tmp_path / 'fp32.jsonl', 'fp32', 50.0, lambda t: 10.0)
    _session(tmp_path / 'int8.jsonl', 'int8', 20.0, lambda t: 8.0)
    s = session_stats(load_session(str(tmp_path / 'fp32.jsonl')))
    assert s.energy_per_inference_j == pytest.approx(0.5)
    out = tmp_path / 'report'
    assert cli_main(['monitor', '--report', str(out), '--session',
                     f'fp32={tmp_path / "fp32.jsonl"}', '--session',
                     f'W8A8={tmp_path / "int8.jsonl"}', '--title', 'FP32 vs W8A8']) == 0
    md = (out / 'report.md').read_text()
    assert md.startswith('# FP32 vs W8A8')
    row = next(line for line in md.splitlines() if line.startswith('| W8A8 |'))
    cells = [c.strip() for c in row.strip('|').split('|')]
    assert cells[3] == '20.00' and cells[6] == '2.50x'       # p50, speed-up vs fp32
    assert cells[8] == '0.1600' and cells[11] == '68.0 %'    # 8 W * 20 ms; 1 - 0.16 / 0.5
    for png in ('latency.png', 'latency_cdf.png', 'power.png'):
        assert (out / png).stat().st_size > 1000
        assert f'![{png}]({png})' in md
    summary = json.loads((out / 'summary.json').read_text())
    assert summary['fp32']['energy_per_inference_j'] == pytest.approx(0.5)


def test_report_without_sessions_is_an_error(tmp_path, capsys):
    assert cli_main(['monitor', '--report', str(tmp_path)]) == 2
    assert '--report needs sessions' in capsys.readouterr().err


def test_live_view_over_a_replayed_log(tmp_path):
    record = tmp_path / 's.jsonl'
    proc = subprocess.run(
        [sys.executable, '-c', 'import sys; from qail_ros.cli import main; sys.exit(main())',
         'monitor', '--source', 'replay', '--logfile', os.path.join(DATA, 'orin_nx_replay.log'),
         '--time-scale', '20', '--duration', '1.0', '--record', str(record)],
        capture_output=True, text=True, cwd=ROOT, timeout=60,
        env={**os.environ, 'PYTHONPATH': ROOT, 'QAIL_ROS_TRANSPORT': 'none',
             'COLUMNS': '160'})
    assert proc.returncode == 0, proc.stderr
    assert 'replaying tegrastats log' in proc.stdout and 'VDD_IN' in proc.stdout
    assert sum('"reading"' in line for line in record.read_text().splitlines()) >= 3


def test_bench_monitor_is_registered():
    from qail_ros.cli.bench_cmd import BENCHES
    assert BENCHES['monitor'] == 'qail_ros.bench.monitor'
    from qail_ros.nodes.registry import NODES
    assert NODES['power_monitor'] == 'qail_ros.nodes.power_monitor:main'


def test_monitor_modules_import_nothing_heavy():
    code = ('import sys; import qail_ros.monitor.tegrastats, qail_ros.monitor.sources, '
            'qail_ros.monitor.energy, qail_ros.monitor.throttle, qail_ros.cli.monitor_cmd; '
            'heavy = [m for m in ("torch", "numpy", "matplotlib", "pynvml", "rich") '
            'if m in sys.modules]; print(heavy)')
    proc = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                          cwd=ROOT, env={**os.environ, 'PYTHONPATH': ROOT}, timeout=60)
    assert proc.stdout.strip() == '[]', proc.stdout + proc.stderr


@pytest.mark.slow
def test_image_policy_report_on_this_machine(tmp_path):
    pytest.importorskip('torch')
    out = tmp_path / 'rep'
    assert cli_main(['monitor', '--report', str(out), '--image-policy', 'fp32,int8-dynamic',
                     '--run-seconds', '2', '--rate', '10']) == 0
    md = (out / 'report.md').read_text()
    assert '| fp32 |' in md and '| int8-dynamic |' in md and 'cpu_load.png' in md


@pytest.mark.parametrize('argv', [['monitor', '--help'], ['monitor', 'parse', '--help'],
                                  ['bench', '--help'], ['bench', 'monitor', '--help']])
def test_help_texts_render(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        cli_main(argv)
    assert exc.value.code == 0
    assert 'usage: qail-ros' in capsys.readouterr().out
