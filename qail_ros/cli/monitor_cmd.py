"""`qail-ros monitor`: live view, offline tegrastats parsing, and precision-comparison reports.

  qail-ros monitor                          live terminal view (power source + policy timing)
  qail-ros monitor --logfile F --source replay   the same over a recorded tegrastats log
  qail-ros monitor parse LOG --json         one JSON object per tegrastats line
  qail-ros monitor --report OUT --session fp32=a.jsonl --session int8=b.jsonl
                                            Markdown + PNG report comparing recorded sessions
  qail-ros monitor --report OUT --image-policy fp32,int8-dynamic
                                            run the image policy once per precision on this
                                            machine (in-process), record, then report
"""
from __future__ import annotations

import argparse
import json
import sys

HELP = 'live power/latency view, `parse LOG --json`, and `--report OUT` precision comparisons'


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest='monitor_command', metavar='SUBCOMMAND')
    p = sub.add_parser('parse', help='parse a tegrastats log (one JSON object per line)',
                       description='Parse a tegrastats log recorded on the robot: one JSON '
                       'object per line with rails (mW), cpu, gpu, ram_mb, swap_mb, '
                       'temperatures_c, timestamp (when printed) and unparsed tokens.')
    p.add_argument('logfile', help="tegrastats log ('-' = stdin)")
    p.add_argument('--json', action='store_true',
                   help='JSON lines (default: a short readable line per sample)')
    p.set_defaults(_monitor_main=_parse_main)

    live = parser.add_argument_group('power source and policy timing')
    live.add_argument('--source', default='auto',
                      choices=['auto', 'tegrastats', 'logfile', 'replay', 'nvml', 'rapl', 'proc'],
                      help='power source (auto: the first that works)')
    live.add_argument('--logfile', default='',
                      help='tegrastats log to replay (--source replay/auto) or follow '
                      '(--source logfile)')
    live.add_argument('--time-scale', type=float, default=1.0,
                      help='replay speed-up (default 1: the log\'s own pace)')
    live.add_argument('--interval-ms', type=int, default=100,
                      help='sampling period in ms (default 100 = 10 Hz)')
    live.add_argument('--timing-topic', action='append', default=None,
                      help='policy timing topic (repeatable; default /vla_policy/policy_timing)')
    live.add_argument('--timing-type', default='std_msgs/msg/Float64MultiArray',
                      help='message type of the timing topics')
    live.add_argument('--duration', type=float, default=None,
                      help='stop after this many seconds (default: until Ctrl-C)')
    live.add_argument('--record', default='', help='also record the session (JSON lines)')
    report = parser.add_argument_group('report')
    report.add_argument('--report', metavar='OUT', default='',
                        help='write report.md + PNG plots into OUT (needs --session or '
                        '--image-policy)')
    report.add_argument('--session', action='append', default=[], metavar='LABEL=FILE',
                        help='a recorded session to compare (repeatable; the first is the '
                        'reference)')
    report.add_argument('--title', default='', help='report title')
    image = parser.add_argument_group('--image-policy: sessions run here for the report')
    image.add_argument('--image-policy', default='', metavar='VARIANTS',
                       help='run qail_ros image_policy in-process once per variant '
                       '(comma-separated: fp32, int8-dynamic, bf16) and report on them')
    image.add_argument('--rate', type=float, default=15.0, help='camera frame rate (Hz)')
    image.add_argument('--run-seconds', type=float, default=20.0, help='seconds per variant')
    parser.set_defaults(_monitor_main=None)


def main(args) -> int:
    if getattr(args, '_monitor_main', None):
        return args._monitor_main(args)
    if args.report:
        return _report_main(args)
    return _live_main(args)


# -- parse ---------------------------------------------------------------------------------------
def _parse_main(args) -> int:
    from qail_ros.errors import QailRosError
    from qail_ros.monitor.tegrastats import parse_line, read_capped_lines
    try:
        f = sys.stdin if args.logfile == '-' else open(args.logfile, encoding='utf-8',
                                                       errors='replace')
    except OSError as exc:
        raise QailRosError(f'cannot read {args.logfile}: {exc.strerror}') from None
    with f:
        for line in read_capped_lines(f):        # a 50 MB line: bounded time and memory
            if not line.strip() or line.startswith('#'):
                continue
            s = parse_line(line)
            if args.json:
                print(json.dumps(s.to_json()), flush=False)
                continue
            power = ' '.join(f'{n}={r.cur_mw / 1000:.2f}W' for n, r in s.rails.items())
            gpu = s.gpu
            cpu = s.cpu_load_percent()
            print(f'{s.timestamp or "-"} cpu={"n/a" if cpu is None else f"{cpu:.0f}%"} '
                  f'gpu={"n/a" if gpu is None or gpu.load_percent is None else gpu.load_percent}'
                  f'% {power}' + (f' unparsed={s.unparsed}' if s.unparsed else ''))
    sys.stdout.flush()
    return 0


# -- report --------------------------------------------------------------------------------------
def _report_main(args) -> int:
    from qail_ros.errors import QailRosError
    from qail_ros.monitor.report import load_session, write_report
    sessions, notes = [], []
    for item in args.session:
        label, sep, path = item.partition('=')
        if not sep:
            label, path = '', item
        sessions.append(load_session(path, label or None))
    if args.image_policy:
        from qail_ros.bench.monitor import run_image_policy_sessions
        variants = [v.strip() for v in args.image_policy.split(',') if v.strip()]
        runs, notes = run_image_policy_sessions(variants, args.report, rate_hz=args.rate,
                                                duration_s=args.run_seconds,
                                                interval_ms=args.interval_ms)
        sessions += runs
        from qail_ros.report import environment
        env = environment()
        notes.insert(0, f'command: `qail-ros monitor --report {args.report} --image-policy '
                     f'{args.image_policy} --run-seconds {args.run_seconds:g} --rate '
                     f'{args.rate:g} --interval-ms {args.interval_ms}` (commit '
                     f'{env["commit"]}, {env["processor"]}, Python {env["python"]})')
    if not sessions:
        raise QailRosError('--report needs sessions: --session LABEL=FILE (recorded with the '
                           'node parameter record_path) or --image-policy fp32,int8-dynamic')
    path = write_report(sessions, args.report, title=args.title or 'Monitor report',
                        notes=notes)
    print(f'wrote {path}')
    return 0


# -- live ----------------------------------------------------------------------------------------
def _live_main(args) -> int:
    import time

    from rich.console import Console
    from rich.live import Live

    from qail_ros.nodes.power_monitor import PowerMonitor
    from qail_ros.runtime import get_runtime
    ros = ['--ros-args', '-p', f'source:={args.source}', '-p', f'interval_ms:={args.interval_ms}',
           '-p', f'replay_time_scale:={float(args.time_scale)}',
           '-p', f'timing_msg_type:={args.timing_type}']
    if args.logfile:
        ros += ['-p', f'logfile:={args.logfile}']
    if args.record:
        ros += ['-p', f'record_path:={args.record}']
    topics = args.timing_topic or ['/vla_policy/policy_timing']
    ros += ['-p', 'timing_topics:=[' + ','.join(topics) + ']']
    runtime = get_runtime()
    runtime.init([])
    node = PowerMonitor(cli_args=ros)
    console = Console()
    node.on_configure()
    node.on_activate()
    deadline = None if args.duration is None else time.monotonic() + args.duration
    try:
        with Live(_render(node), console=console, refresh_per_second=4,
                  transient=False) as live:
            while deadline is None or time.monotonic() < deadline:
                runtime.spin_once([node], timeout_s=0.25)
                live.update(_render(node))
    except KeyboardInterrupt:
        pass
    finally:
        node.on_deactivate()
        node.on_cleanup()
        node.destroy_node()
        runtime.shutdown()
    return 0


def _render(node):
    import math

    from rich.table import Table
    snap = node.snapshot()
    r, th = snap['reading'], snap['throttle']
    src = node.source.describe() if node.source else 'none'
    power = 'not measured' if r is None or r.power_w is None else f'{r.power_w:.2f} W'
    table = Table(title=f'power_monitor: {src}', caption=(
        'no power source available: latency only' if not node.source.has_power else
        f'idle baseline {snap["baseline_w"]:.2f} W'), expand=False)
    for col in ('what', 'value'):
        table.add_column(col)
    table.add_row('power', power + (f' [{r.power_label}]' if r and r.power_label else ''))
    if r is not None:
        for name, w in r.rails_w.items():
            table.add_row(f'  {name}', f'{w:.3f} W')
        table.add_row('CPU', 'n/a' if r.cpu_percent is None else f'{r.cpu_percent:.0f} %')
        table.add_row('GPU', 'n/a' if r.gpu_percent is None else
                      f'{r.gpu_percent:.0f} % @ {r.gpu_freq_mhz or 0:.0f} MHz')
        if r.ram_used_mb is not None:
            table.add_row('RAM', f'{r.ram_used_mb:.0f} / {r.ram_total_mb:.0f} MB')
    table.add_row('thermal', ('[red]THROTTLING[/red] ' if th.throttling else '') + th.reason)

    def f(v, d=2):
        return 'n/a' if v is None or math.isnan(v) else f'{v:.{d}f}'
    for topic, st in snap['stats'].items():
        table.add_row(f'[bold]{topic}[/bold]',
                      f'{st.count} inf, p50 {f(st.latency_p50_ms)} / p90 {f(st.latency_p90_ms)}'
                      f' / p99 {f(st.latency_p99_ms)} ms, {f(st.rate_hz, 1)} Hz, '
                      f'{f(st.energy_per_inference_j, 4)} J/inf '
                      f'(dynamic {f(st.dynamic_energy_per_inference_j, 4)} J), '
                      f'{f(st.mean_power_w)} W in inference')
    return table
