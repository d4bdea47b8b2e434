"""`qail-ros bench safety`: inject faults into running launches; is the robot told to stop?

For each launch (`orin_vla`, `cilrs_drive`: `qail-ros launch NAME`, the embedded launcher,
every node its own process, Zenoh between them) the benchmark starts the launch on a private
router port, waits for normal actions on the actuator topic, then injects each fault from a
process of its own (a Zenoh peer of the launch) and watches only what a robot and its
operator would see: the actuator topic (cmd_twist / vehicle_control_cmd; the safe command
carries stamp 0), /diagnostics of the policy, the launch's output and its exit code.

Faults: frames of unknown encodings, short data, NaN float frames, 0x0 frames, oversized
frames (declared 5000x4000) (each bad frame sent again every 0.1 s until a safe command comes,
as a faulty camera would: its live camera's next frame can replace one bad frame in the
policy's depth-1 latest-frame queue; `injections` says how many were sent; the time runs from
the first), a frame burst (300 frames at once), an over-long instruction
(200 kB; orin_vla only), a camera that stops (SIGSTOP of the camera / simulator process, then
SIGCONT), a killed router (SIGKILL of the launch's Zenoh router, then a new one on the same
port), a stopped required node (SIGTERM of the policy: the last fault of a launch).

Per fault: `detected` (the policy's diagnostics counted it: for the killed router its
`router_losses` with the router state 'lost' at WARN, or a node's warning naming the router;
for a stopped required node the launch ended non-zero with its line 'required node X
exited'), `safe_command_ms` (injection -> first safe command seen; null when the fault needs
none: a burst, an instruction, a router lost while the peers stay linked), `recovered` (normal
actions again after the fault ended, for the router with the diagnostics saying 'connected'
again; for the stopped required node: the launch exited non-zero and nothing is left
running). `silent`: a fault that was neither detected nor answered by a safe command.

    qail-ros bench safety [--launches orin_vla cilrs_drive] [--json]

Takes 2-4 minutes (most of it loading the launches). Timings depend on the machine's load.
"""
from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from typing import Any

HELP = 'inject faults into running orin_vla / cilrs_drive launches; safe command in time?'

LAUNCHES = {
    # name: camera topic, actuator topic and type, camera process, policy process, timeout
    'orin_vla': dict(camera='/camera/image_raw', actuator='/cmd_twist',
                     actuator_type='geometry_msgs/msg/TwistStamped', camera_node='camera_source',
                     policy_node='vla_policy', input_timeout_s=0.6, instruction=True,
                     args=['instruction:=pick up the red block']),
    'cilrs_drive': dict(camera='/carla/ego_vehicle/rgb_front/image',
                        actuator='/carla/ego_vehicle/vehicle_control_cmd',
                        actuator_type='carla_msgs/msg/CarlaEgoVehicleControl',
                        camera_node='env_bridge', policy_node='cilrs_policy',
                        input_timeout_s=0.5, instruction=False, args=['rate_hz:=20.0']),
}

FAULTS = ('bad_encoding', 'short_data', 'nan_frame', 'empty_frame', 'oversized_frame',
          'frame_burst', 'long_instruction', 'camera_stops', 'killed_router',
          'stopped_required_node')
#: fault -> the diagnostics counter that shows it was detected
COUNTERS = {'bad_encoding': 'rejected_encoding', 'short_data': 'rejected_short_data',
            'nan_frame': 'rejected_non_finite', 'empty_frame': 'rejected_empty',
            'oversized_frame': 'rejected_oversized', 'frame_burst': 'inputs_dropped',
            'long_instruction': 'instructions_rejected',
            'camera_stops': 'failsafe_activations', 'killed_router': 'router_losses'}
#: faults after which no safe command is due (the policy keeps acting correctly)
NO_SAFE = ('frame_burst', 'long_instruction')
#: a bad frame is sent again every this many seconds until a safe command comes (a faulty
#: camera sends on; the policy's latest-frame queue keeps only the newest frame)
BAD_FRAME_REPEAT_S = 0.1


def add_arguments(parser) -> None:
    parser.add_argument('--launches', nargs='+', choices=sorted(LAUNCHES),
                        default=['orin_vla', 'cilrs_drive'], help='launches to test')
    parser.add_argument('--start-timeout', type=float, default=180.0,
                        help='seconds to wait for the first normal action of a launch')


# -- the observer -----------------------------------------------------------------------------
def _make_observer(cfg: dict):
    from qail_ros import messages
    from qail_ros.msg_defs import register_carla_msgs
    from qail_ros.runtime import Node
    register_carla_msgs()

    class Observer(Node):
        """Publishes faults; records the actuator topic and the policy's diagnostics."""

        def __init__(self):
            super().__init__('bench_safety')
            self.lock = threading.Lock()
            self.commands: list[tuple[float, bool]] = []      # (receive time, safe)
            self.diag: dict[str, str] = {}
            self.diag_level = 0
            self.diag_time = 0.0
            self.levels: list[tuple[float, int]] = []
            self.create_subscription(cfg['actuator_type'], cfg['actuator'], self.on_command,
                                     100)
            self.create_subscription('diagnostic_msgs/msg/DiagnosticArray', '/diagnostics',
                                     self.on_diag, 100)
            self.image_pub = self.create_publisher('sensor_msgs/msg/Image', cfg['camera'], 10)
            self.instruction_pub = self.create_publisher('std_msgs/msg/String',
                                                         '/instruction', 10)

        def on_command(self, msg) -> None:
            safe = messages.ns_from_time(msg.header.stamp) == 0
            with self.lock:
                self.commands.append((time.monotonic(), safe))

        def on_diag(self, msg) -> None:
            for st in msg.status:
                if st.name == f'{cfg["policy_node"]}: policy':
                    with self.lock:
                        self.diag = {kv.key: kv.value for kv in st.values}
                        self.diag_level, self.diag_time = int(st.level), time.monotonic()
                        self.levels.append((self.diag_time, int(st.level)))

        def first(self, since: float, safe: bool) -> float | None:
            with self.lock:
                for t, s in self.commands:
                    if t >= since and s == safe:
                        return t
            return None

        def value(self, key: str) -> str:
            with self.lock:
                return self.diag.get(key, '')

        def counter(self, key: str) -> int:
            with self.lock:
                try:
                    return int(self.diag.get(key, 0))
                except ValueError:
                    return 0

    return Observer()


def _image(encoding='rgb8', width=64, height=48, data=None, stamp_ns=None, step=None):
    import numpy as np

    from qail_ros import messages
    step = width * 3 if step is None else step
    data = np.zeros(step * height, np.uint8) if data is None else data
    return messages.new(
        'sensor_msgs/msg/Image',
        header=messages.new('std_msgs/msg/Header',
                            stamp=messages.time_from_ns(stamp_ns or time.time_ns()),
                            frame_id='bench'),
        height=height, width=width, encoding=encoding, is_bigendian=0, step=step, data=data)


# -- the launch -------------------------------------------------------------------------------
class _Launch:
    """`qail-ros launch NAME` as a child process, its output read in the background."""

    def __init__(self, name: str, args: list[str], env: dict[str, str]):
        self.proc = subprocess.Popen(
            [sys.executable, '-c', 'import sys; from qail_ros.cli import main; sys.exit(main())',
             'launch', name, *args], env=env, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True, start_new_session=True)
        self.lines: list[str] = []
        self._queue: queue.Queue = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip('\n'))

    def child(self, needle: str):
        """The process of the launch whose command line contains `needle`."""
        import psutil
        try:
            children = psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return None
        for p in children:
            try:
                if needle in ' '.join(p.cmdline()):
                    return p
            except psutil.Error:
                continue
        return None

    def stop(self, timeout_s: float = 15.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        return self.proc.returncode

    def tree_alive(self) -> list:
        import psutil
        alive = []
        for p in psutil.process_iter(['pid']):
            try:
                if os.getpgid(p.pid) == self.proc.pid and p.status() != psutil.STATUS_ZOMBIE:
                    alive.append(p.pid)
            except (ProcessLookupError, psutil.Error, OSError):
                continue
        return alive


def _spin(rt, seconds: float, until=None) -> bool:
    return rt.spin_until(until or (lambda: False), seconds)


# -- one launch -------------------------------------------------------------------------------
def _run_launch(name: str, start_timeout_s: float, say) -> tuple[list[dict], dict]:
    import numpy as np

    from qail_ros import messages
    from qail_ros.runtime import set_runtime
    from qail_ros.runtime import zenoh_transport as zt
    from qail_ros.runtime.embedded import EmbeddedRuntime

    cfg = LAUNCHES[name]
    timeout_s = cfg['input_timeout_s']
    endpoint = zt.free_endpoint()
    env = dict(os.environ, QAIL_ROS_ZENOH_ROUTER=endpoint, QAIL_ROS_RUNTIME='embedded',
               PYTHONUNBUFFERED='1')
    env.pop('QAIL_ROS_TRANSPORT', None)
    os.environ['QAIL_ROS_ZENOH_ROUTER'] = endpoint
    launch = _Launch(name, cfg['args'], env)
    results: list[dict] = []
    extra: dict[str, Any] = {'launch': name}
    new_router = None
    deadline = time.monotonic() + 60
    while not zt.router_reachable(endpoint) and time.monotonic() < deadline:
        time.sleep(0.1)
    rt = EmbeddedRuntime(transport='zenoh')
    set_runtime(rt)
    rt.init([])
    obs = _make_observer(cfg)
    try:
        t_start = time.monotonic()
        if not _spin(rt, start_timeout_s, lambda: obs.first(0, False) is not None
                     and obs.diag_time > 0):
            raise RuntimeError(f'{name}: no normal action within {start_timeout_s:.0f} s:\n'
                               + '\n'.join(launch.lines[-20:]))
        extra['start_s'] = round(time.monotonic() - t_start, 1)
        say(f'{name}: first action after {extra["start_s"]} s')
        _spin(rt, 1.5)

        def measure(fault: str, inject, restore=None, wait_s: float = 3.0,
                    repeat_s: float | None = None) -> dict:
            """`repeat_s`: inject again every repeat_s until a safe command (a camera that sends
            bad frames sends them on; one frame alone can be replaced in the policy's
            depth-1 latest-frame queue by the camera's next frame before it is read)."""
            counter = COUNTERS.get(fault)
            before = obs.counter(counter) if counter else 0
            _spin(rt, 0.3)
            expect_safe = fault not in NO_SAFE

            def done() -> bool:
                return ((obs.first(t0, True) is not None or not expect_safe)
                        and (not counter or obs.counter(counter) > before))

            t0 = time.monotonic()
            inject()
            injections = 1
            end = t0 + wait_s
            while not _spin(rt, min(repeat_s or wait_s, max(end - time.monotonic(), 0.0)),
                            done) and time.monotonic() < end:
                if repeat_s and obs.first(t0, True) is None:   # not read yet: send again
                    inject()
                    injections += 1
            safe_t = obs.first(t0, True)
            detected = bool(counter) and obs.counter(counter) > before
            if restore is not None:
                restore()
            t1 = time.monotonic()
            recovered = _spin(rt, 20.0, lambda: obs.first(max(t1, safe_t or t1), False)
                              is not None)
            row = {'launch': name, 'fault': fault, 'detected': detected,
                   'safe_command_ms': None if safe_t is None else round((safe_t - t0) * 1e3, 1),
                   'recovered': recovered, 'expect_safe': expect_safe,
                   'injections': injections}
            say(f'{name}: {fault}: {row}')
            return row

        def publish(msg_factory, n=1):
            def go():
                for _ in range(n):
                    obs.image_pub.publish(msg_factory())
            return go

        bad = dict(repeat_s=BAD_FRAME_REPEAT_S)
        results.append(measure('bad_encoding', publish(lambda: _image(encoding='weird')), **bad))
        results.append(measure('short_data', publish(
            lambda: _image(data=np.zeros(100, np.uint8))), **bad))
        nan = np.full(48 * 64, np.nan, np.float32).view(np.uint8)
        results.append(measure('nan_frame', publish(
            lambda: _image(encoding='32FC1', step=64 * 4, data=nan)), **bad))
        results.append(measure('empty_frame', publish(
            lambda: _image(width=0, height=0, data=np.zeros(0, np.uint8))), **bad))
        results.append(measure('oversized_frame', publish(
            lambda: _image(width=5000, height=4000, data=np.zeros(16, np.uint8))), **bad))
        valid = np.random.default_rng(0).integers(0, 256, (48 * 64 * 3,), dtype=np.uint8)
        results.append(measure('frame_burst', publish(lambda: _image(data=valid), n=300)))
        if cfg['instruction']:
            results.append(measure('long_instruction', lambda: obs.instruction_pub.publish(
                messages.new('std_msgs/msg/String', data='x' * 200_000))))
        camera = launch.child(f'qail_ros.nodes.{cfg["camera_node"]}')
        results.append(measure(
            'camera_stops', lambda: camera.send_signal(signal.SIGSTOP),
            restore=lambda: camera.send_signal(signal.SIGCONT),
            wait_s=timeout_s * 2 + 2.0))

        # killed router: SIGKILL, then a new router on the same port
        router = launch.child('qail_ros.cli router')
        before = obs.counter('failsafe_activations')
        losses_before = obs.counter('router_losses')
        lines_before = len(launch.lines)
        kill_ns = time.time_ns()
        t0 = time.monotonic()
        router.kill()
        lost = _spin(rt, timeout_s * 2 + 8.0, lambda: obs.counter('router_losses')
                     > losses_before and obs.value('router') == 'lost')
        lost_level = obs.diag_level
        _spin(rt, 0.5)
        continued = obs.first(t0 + 0.5, False) is not None
        new_router = zt.ensure_router(endpoint)
        t1 = time.monotonic()
        recovered = _spin(rt, 30.0, lambda: obs.first(t1, False) is not None
                          and obs.value('router') == 'connected')
        _spin(rt, 2.5)
        tripped = obs.counter('failsafe_activations') > before
        start_ns = obs.counter('last_failsafe_start_ns')
        safe_ms = (round((start_ns - kill_ns) / 1e6, 1) if tripped and start_ns > kill_ns
                   else None)
        seen = obs.first(t0, True)
        if safe_ms is None and seen is not None:
            safe_ms = round((seen - t0) * 1e3, 1)
        # the nodes' own words on the router: a warning or error naming it after the kill
        warned = any('router' in line.lower() and ('[WARN]' in line or '[ERROR]' in line)
                     for line in launch.lines[lines_before:])
        row = {'launch': name, 'fault': 'killed_router', 'detected': lost or tripped or warned,
               'safe_command_ms': safe_ms, 'recovered': recovered,
               'expect_safe': not continued, 'actions_continued_without_router': continued,
               'router_lost_in_diagnostics': lost, 'diagnostics_level': lost_level,
               'router_warning_in_output': warned}
        say(f'{name}: killed_router: {row}')
        results.append(row)

        # stopped required node: SIGTERM of the policy; the launch should end non-zero, its
        # output naming the node
        policy = launch.child(f'qail_ros.nodes.{cfg["policy_node"]}')
        lines_before = len(launch.lines)
        t0 = time.monotonic()
        policy.send_signal(signal.SIGTERM)
        _spin(rt, 3.0, lambda: obs.first(t0, True) is not None)
        safe_t = obs.first(t0, True)
        try:
            code = launch.proc.wait(15.0)
        except subprocess.TimeoutExpired:
            code = None
        time.sleep(0.3)   # the reader thread takes the last lines
        named = any(f'required node {cfg["policy_node"]} exited' in line
                    for line in launch.lines[lines_before:])
        row = {'launch': name, 'fault': 'stopped_required_node',
               'detected': code not in (None, 0) and named,
               'safe_command_ms': None if safe_t is None else round((safe_t - t0) * 1e3, 1),
               'recovered': code not in (None, 0) and not launch.tree_alive(),
               'expect_safe': True, 'launch_exit_code': code,
               'required_node_line': named}
        say(f'{name}: stopped_required_node: {row}')
        results.append(row)
    finally:
        try:
            rt.shutdown()
        finally:
            set_runtime(None)
            extra['exit_code'] = launch.stop()
            if new_router is not None:
                new_router.stop()
    return results, extra


def main(args) -> int:
    from qail_ros.report import emit_json, environment
    rows: list[dict] = []
    launches: list[dict] = []
    say = (lambda text: print(text, file=sys.stderr, flush=True)) if args.json else print
    for name in args.launches:
        found, extra = _run_launch(name, args.start_timeout, say)
        rows += found
        launches.append(extra)
    print(f'{"launch":<12} {"fault":<22} {"detected":>8} {"safe ms":>9} {"recovered":>9}')
    for r in rows:
        ms = '-' if r['safe_command_ms'] is None else f'{r["safe_command_ms"]:.0f}'
        print(f'{r["launch"]:<12} {r["fault"]:<22} {str(r["detected"]):>8} {ms:>9} '
              f'{str(r["recovered"]):>9}')
    expected = [r for r in rows if r['expect_safe']]
    bounds = {n: LAUNCHES[n]['input_timeout_s'] * 1.25 * 1e3 for n in LAUNCHES}
    in_time = [r for r in expected if r['safe_command_ms'] is not None
               and r['safe_command_ms'] <= bounds[r['launch']]]
    summary = {
        'faults': len(rows),
        'detected': sum(r['detected'] for r in rows),
        'safe_expected': len(expected),
        'safe_within_timeout': len(in_time),
        'silent': sum(1 for r in rows if not r['detected'] and r['safe_command_ms'] is None),
        'recovered': sum(r['recovered'] for r in rows),
        'bound_ms': bounds, 'launches': launches, **environment(),
    }
    print(f'{summary["detected"]}/{summary["faults"]} detected, '
          f'{summary["safe_within_timeout"]}/{summary["safe_expected"]} safe commands within '
          f'input_timeout_s + one watchdog period, {summary["silent"]} silent, '
          f'{summary["recovered"]}/{summary["faults"]} recovered')
    if args.json:
        for r in rows:
            print(json.dumps({k: r[k] for k in ('fault', 'detected', 'safe_command_ms',
                                                'recovered')} | {'launch': r['launch']}))
        emit_json(summary)
    return 0
