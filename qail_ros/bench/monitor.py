"""`qail-ros bench monitor`: CPU cost of the power_monitor node itself (goal: < 2 % of one core).

Runs in one process on the embedded runtime (no transport), for --seconds each:
  baseline   a fake policy publishing policy_timing messages at --timing-hz, nothing else
  +monitor   the same plus power_monitor sampling every --interval-ms (default 100 ms = 10 Hz)
             and publishing /diagnostics + ~/metrics every second, once per source:
             'replay' (a real-format AGX Orin tegrastats line replayed at the sampling rate:
             the Jetson parsing path) and 'proc' (psutil: what this machine uses)
CPU time is the process's user+system time (all threads) over wall time; the monitor's cost is
the difference to the baseline, in % of one core. The tegrastats process itself (on a Jetson)
is not counted: it is NVIDIA's tool and runs whether or not this node parses its output.
"""
from __future__ import annotations

import os
import tempfile
import time

HELP = 'CPU overhead of the power_monitor node at 10 Hz sampling (percent of one core)'

#: AGX Orin 64GB, JetPack 5/6 (GitHub GDWR/jetson_exporter issue #14): the longest real line.
AGX_ORIN_LINE = (
    '04-11-2025 10:36:27 RAM 4321/62801MB (lfb 1759x4MB) SWAP 19/31400MB (cached 0MB) CPU '
    '[0%@729,0%@729,0%@729,0%@729,0%@729,0%@729,0%@729,0%@729,0%@729,0%@729,0%@729,0%@729] '
    'EMC_FREQ 0%@2133 GR3D_FREQ 0%@[0,0] VIC_FREQ 729 APE 174 CV0@-256C CPU@44.562C Tboard@32C '
    'SOC2@40.093C Tdiode@33C SOC0@41.093C CV1@-256C GPU@-256C tj@44.343C SOC1@41.25C '
    'CV2@-256C VDD_GPU_SOC 2340mW/2340mW VDD_CPU_CV 390mW/390mW VIN_SYS_5V0 4025mW/4025mW '
    'NC 0mW/0mW VDDQ_VDD2_1V8AO 301mW/301mW NC 0mW/0mW')


def add_arguments(parser) -> None:
    parser.add_argument('--seconds', type=float, default=20.0, help='seconds per run')
    parser.add_argument('--interval-ms', type=int, default=100, help='sampling period')
    parser.add_argument('--timing-hz', type=float, default=30.0,
                        help='policy timing messages per second')
    parser.add_argument('--sources', default='replay,proc', help='sources to measure')


def _cpu_s() -> float:
    return time.process_time()  # CLOCK_PROCESS_CPUTIME_ID: all threads, ns resolution


def _run(seconds: float, timing_hz: float, monitor_args: list[str] | None) -> dict:
    from qail_ros import policy_io
    from qail_ros.runtime import Node, set_runtime
    from qail_ros.runtime.embedded import EmbeddedRuntime
    rt = EmbeddedRuntime(transport='none')  # in-process only
    set_runtime(rt)
    rt.init([])
    nodes = []
    monitor = None
    try:
        policy = Node('fake_policy')
        pub = policy.create_publisher('std_msgs/msg/Float64MultiArray', '~/policy_timing', 10)

        def tick():
            now = time.time()
            pub.publish(policy_io.timing_to_msg(policy_io.InferenceTiming(
                stamp_ns=time.time_ns(), start_s=now - 0.004, end_s=now)))
        policy.create_timer(1.0 / timing_hz, tick)
        nodes.append(policy)
        if monitor_args is not None:
            from qail_ros.nodes.power_monitor import PowerMonitor
            monitor = PowerMonitor(cli_args=['--ros-args', '-p',
                                             'timing_topics:=[/fake_policy/policy_timing]']
                                   + monitor_args)
            monitor.on_configure()
            monitor.on_activate()
            nodes.append(monitor)
        rt.spin(nodes, duration_s=0.5)  # settle
        c0, w0 = _cpu_s(), time.perf_counter()
        rt.spin(nodes, duration_s=seconds)
        cpu, wall = _cpu_s() - c0, time.perf_counter() - w0
        out = {'cpu_percent_of_core': 100.0 * cpu / wall, 'wall_s': wall}
        if monitor is not None:
            snap = monitor.snapshot()
            out['samples'] = snap['readings']
            out['samples_per_s'] = snap['readings'] / (wall + 0.5)
            st = snap['stats']['/fake_policy/policy_timing']
            out['inferences'] = st.total
            monitor.on_deactivate()
            monitor.on_cleanup()
        return out
    finally:
        rt.shutdown()
        set_runtime(None)


def main(args) -> int:
    from qail_ros.report import emit_json, environment, table
    sources = [s.strip() for s in args.sources.split(',') if s.strip()]
    with tempfile.TemporaryDirectory() as tmp:
        log = os.path.join(tmp, 'tegrastats.log')
        with open(log, 'w') as f:
            f.write('\n'.join([AGX_ORIN_LINE] * 50) + '\n')
        base = _run(args.seconds, args.timing_hz, None)
        rows, results = [], {'baseline': base}
        rows.append(['baseline (timing publisher only)', '-', base['cpu_percent_of_core'],
                     0.0])
        for source in sources:
            extra = ['-p', f'source:={source}', '-p', f'interval_ms:={args.interval_ms}']
            if source == 'replay':
                extra += ['-p', f'logfile:={log}', '-p', 'replay_loop:=true']
            res = _run(args.seconds, args.timing_hz, extra)
            res['overhead_percent_of_core'] = (res['cpu_percent_of_core']
                                               - base['cpu_percent_of_core'])
            results[source] = res
            rows.append([f'+ power_monitor ({source})', f"{res['samples_per_s']:.1f}",
                         res['cpu_percent_of_core'], res['overhead_percent_of_core']])
    table(f'power_monitor CPU cost ({args.seconds:g} s each, sampling every '
          f'{args.interval_ms} ms, timing at {args.timing_hz:g} Hz)',
          ['run', 'samples/s', 'process CPU (% of one core)', 'monitor overhead (% core)'],
          rows)
    if args.json:
        emit_json({'bench': 'monitor', 'interval_ms': args.interval_ms,
                   'timing_hz': args.timing_hz, 'seconds': args.seconds, 'results': results,
                   'environment': environment()})
    return 0


# -- sessions of the image policy at several precisions (qail-ros monitor --image-policy) --------
def run_image_policy_sessions(variants: list[str], out_dir: str, rate_hz: float = 15.0,
                              duration_s: float = 20.0, interval_ms: int = 100,
                              num_threads: int = 1):
    """Run each variant, record a session under out_dir/sessions/, return (sessions, notes).

    Per variant (a precision of the conv image policy engine, qail_ros.policies.engine), in one
    process on the embedded runtime: a camera harness publishing frames at `rate_hz`, the
    image_policy node loading its engine at that precision (`precision:=VARIANT`), and the
    power_monitor node recording a session
    from the policy's `~/policy_timing` messages and whatever power source this machine has.
    The sessions feed `qail_ros.monitor.report.write_report`."""
    import torch

    import numpy as np

    from qail_ros.errors import QailRosError
    from qail_ros.image import from_numpy
    from qail_ros.monitor.report import load_session
    from qail_ros.nodes.image_policy import ImagePolicy
    from qail_ros.nodes.power_monitor import PowerMonitor
    from qail_ros.policies.engine import PRECISIONS as VARIANTS
    from qail_ros.runtime import Node, set_runtime
    from qail_ros.runtime.embedded import EmbeddedRuntime

    for v in variants:
        if v not in VARIANTS:
            raise QailRosError(f"unknown variant {v!r}: choose from {', '.join(VARIANTS)}")
    torch.set_num_threads(num_threads)
    sessions, notes = [], []
    for variant in variants:
        path = os.path.join(out_dir, 'sessions', f'{variant}.jsonl')
        rt = EmbeddedRuntime(transport='none')  # in-process only
        set_runtime(rt)
        rt.init([])
        try:
            policy = ImagePolicy(cli_args=['--ros-args', '-p', 'log_period_s:=10.0',
                                           '-p', f'num_threads:={num_threads}',
                                           '-p', f'precision:={variant}'])
            policy.on_configure()
            # warm-up of the variant outside the measurement
            frame = np.random.default_rng(0).integers(0, 256, (240, 320, 3), dtype=np.uint8)
            for _ in range(3):
                policy.engine.infer({'image': frame, 'instruction': ''})
            monitor = PowerMonitor(cli_args=[
                '--ros-args', '-p', f'interval_ms:={interval_ms}', '-p',
                f'record_path:={path}', '-p', f'session_label:={variant}', '-p',
                'timing_topics:=[/image_policy/policy_timing]'])
            monitor.on_configure()
            camera = Node('camera_harness')
            pub = camera.create_publisher('sensor_msgs/msg/Image', '/image_raw', 10)
            rng = np.random.default_rng(1)
            frames = [rng.integers(0, 256, (240, 320, 3), dtype=np.uint8) for _ in range(8)]
            count = [0]

            def publish_frame():
                count[0] += 1
                pub.publish(from_numpy(frames[count[0] % len(frames)], 'rgb8',
                                       stamp=time.time_ns(), frame_id='camera'))
            camera.create_timer(1.0 / rate_hz, publish_frame)
            monitor.on_activate()
            policy.on_activate()
            rt.spin([camera, policy, monitor], duration_s=duration_s)
            policy.on_deactivate()
            monitor.on_deactivate()
            monitor.on_cleanup()
            notes_src = monitor.source.describe()
            for node in (camera, policy, monitor):
                node.destroy_node()
        finally:
            rt.shutdown()
            set_runtime(None)
        sessions.append(load_session(path, variant))
        notes.append(f'{variant}: {count[0]} frames at {rate_hz:g} Hz over {duration_s:g} s; '
                     f'power source: {notes_src}')
    load1, _, _ = os.getloadavg()
    notes.append(f'machine load: 1-minute load average {load1:.1f} on {os.cpu_count()} CPUs '
                 'when the runs ended (shared machine: latency includes contention)')
    notes.insert(0, 'image_policy (ConvActionRegressor, untrained, 224x224 input, '
                 f'{num_threads} torch thread(s)) in-process on the embedded runtime; timing '
                 'from its ~/policy_timing messages (qail_ros.policy_io) through power_monitor')
    return sessions, notes
