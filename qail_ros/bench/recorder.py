"""`qail-ros bench recorder`: can fp_recorder keep up with a 30 Hz 640x480 rgb8 camera?

Two processes over the embedded runtime (Zenoh, a private router on a free port): this
process publishes the synthetic camera scene (qail_ros.nodes.camera_source.SyntheticScene)
at RATE Hz for DURATION s, exactly RATE x DURATION frames, once the recorder's subscription
has matched; the recorder is a separate `python -m qail_ros.nodes.fp_recorder` process, as
on a robot. The recorder's CPU is measured with psutil on its process over the publishing
window (100 % = one core). At the end the recorder gets SIGINT (it closes the bag), and the
bag is read back: frames recorded = image messages in the bag.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HELP = 'fp_recorder with a 30 Hz 640x480 rgb8 camera: frames recorded vs published, CPU, size'

_TOPIC = '/bench/image_raw'


def add_arguments(parser) -> None:
    parser.add_argument('--duration', type=float, default=60.0, help='seconds of publishing')
    parser.add_argument('--rate', type=float, default=30.0, help='frames per second')
    parser.add_argument('--width', type=int, default=640)
    parser.add_argument('--height', type=int, default=480)
    parser.add_argument('--storage', default='mcap', choices=('mcap', 'sqlite3'))
    parser.add_argument('--output', default=None, metavar='DIR',
                        help='where the bag goes (default: a temporary directory, deleted)')
    parser.add_argument('--keep', action='store_true', help='keep the bag')
    parser.add_argument('--report-period', type=float, default=10.0,
                        help="the recorder's status log period (its log: DIR/recorder.log)")
    parser.add_argument('--stop-timeout', type=float, default=300.0,
                        help='seconds the recorder may take to close after SIGINT')


def _run(cfg: dict, out_dir: Path) -> dict:
    """Camera here, recorder in a child process, over Zenoh through a private router."""
    from qail_ros.runtime import zenoh_transport as zt
    with zt.private_router():
        return _record(cfg, out_dir)


def _record(cfg: dict, out_dir: Path) -> dict:
    import numpy as np
    import psutil

    from qail_ros import image as im
    from qail_ros.bag import BagReader
    from qail_ros.errors import TransportError
    from qail_ros.nodes.camera_source import IMAGE_QOS, SyntheticScene
    from qail_ros.recording import EpisodeInfo
    from qail_ros.runtime import Node, set_runtime
    from qail_ros.runtime.embedded import EmbeddedRuntime

    rt = EmbeddedRuntime(transport='zenoh')
    set_runtime(rt)
    rt.init([])
    child = None
    try:
        node = Node('bench_camera', runtime=rt)
        pub = node.create_publisher('sensor_msgs/msg/Image', _TOPIC, IMAGE_QOS)
        root = Path(__file__).resolve().parents[2]
        env = dict(os.environ)
        env['PYTHONPATH'] = os.pathsep.join(p for p in (str(root), env.get('PYTHONPATH')) if p)
        env['QAIL_ROS_RUNTIME'] = 'embedded'
        # The recorder's log goes to a file, never a pipe: a full pipe would block it.
        log_path = out_dir / 'recorder.log'
        log_file = open(log_path, 'w')
        child = subprocess.Popen(
            [sys.executable, '-m', 'qail_ros.nodes.fp_recorder', '--ros-args',
             '-p', f'output_dir:={out_dir}', '-p', f"image_topics:=['{_TOPIC}']",
             '-p', "instruction_topic:=''", '-p', 'action_topics:=[]',
             '-p', "raw_outputs_topic:=''", '-p', "timing_topic:=''",
             '-p', f'storage:={cfg["storage"]}', '-p', 'policy_id:=bench',
             '-p', f'report_period_s:={cfg["report_period_s"]}', '-p', 'min_free_mb:=50.0'],
            env=env, stderr=log_file, stdout=log_file, text=True,
            # A background job of a non-interactive shell inherits SIGINT ignored, and Python
            # then keeps it ignored: give the recorder the default so Ctrl-C stops it.
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        if not rt.spin_until(lambda: pub.get_subscription_count() >= 1 and pub.remote
                             and pub.remote.matching, timeout_s=60.0):
            raise TransportError('the recorder process never subscribed: '
                                 + log_path.read_text()[-2000:])
        rt.spin(duration_s=1.0)             # let the recorder open its first bag
        scene = SyntheticScene(cfg['width'], cfg['height'])
        total = int(round(cfg['rate'] * cfg['duration']))
        proc = psutil.Process(child.pid)
        cpu0, t0 = proc.cpu_times(), time.monotonic()
        period = 1.0 / cfg['rate']
        published = 0
        start = time.monotonic()
        while published < total:
            due = start + published * period
            wait = due - time.monotonic()
            if wait > 0:
                rt.spin(duration_s=wait)
            frame = scene.frame(published)
            pub.publish(im.from_numpy(frame, 'rgb8', stamp=node.now_ns(), frame_id='camera'))
            published += 1
        rt.spin(duration_s=period)
        cpu1, t1 = proc.cpu_times(), time.monotonic()
        rss_mb = proc.memory_info().rss / 1e6
        rt.spin(duration_s=2.0)              # the last frames reach the disk
        t_stop = time.monotonic()
        child.send_signal(signal.SIGINT)
        try:
            child.wait(timeout=cfg['stop_timeout'])
        except subprocess.TimeoutExpired:
            child.kill()                     # the bag is then read by crash recovery
            child.wait()
        stop_s = time.monotonic() - t_stop
        log_file.close()
        err = log_path.read_text()
        bags = sorted(p for p in out_dir.iterdir() if p.is_dir())
        recorded, bag_bytes, drops, recovered = 0, 0, 0, False
        for bag_dir in bags:
            with BagReader(bag_dir) as bag:
                info = bag.topics.get(_TOPIC)
                recorded += info.count if info else 0
                bag_bytes += bag.size_bytes
                recovered = recovered or bag.recovered
                ep = EpisodeInfo.from_metadata(bag.custom_metadata)
                if ep is not None:
                    drops += sum(ep.drops.values())
        busy = (cpu1.user - cpu0.user) + (cpu1.system - cpu0.system)
        return {
            'bench': 'recorder', 'published': published, 'recorded': recorded,
            'dropped': published - recorded, 'recorder_queue_drops': drops,
            'recorder_cpu_percent': round(100.0 * busy / (t1 - t0), 2),
            'recorder_rss_mb': round(rss_mb, 1),
            'bag_bytes': bag_bytes, 'bags': len(bags), 'bag_recovered': recovered,
            'rate_hz': cfg['rate'], 'width': cfg['width'], 'height': cfg['height'],
            'duration_s': cfg['duration'], 'storage': cfg['storage'],
            'achieved_rate_hz': round(published / (t1 - t0 - period), 3),
            'frame_bytes': int(np.prod((cfg['height'], cfg['width'], 3))),
            'recorder_exit_code': child.returncode,
            'recorder_stop_s': round(stop_s, 2),
            'recorder_log_tail': err.strip().splitlines()[-3:],
        }
    finally:
        if child is not None and child.poll() is None:
            child.kill()
            child.wait()
        rt.shutdown()
        set_runtime(None)


def main(args) -> int:
    import shutil

    from qail_ros import report
    cfg = {'duration': float(args.duration), 'rate': float(args.rate), 'width': int(args.width),
           'height': int(args.height), 'storage': args.storage,
           'report_period_s': float(args.report_period), 'stop_timeout': float(args.stop_timeout)}
    if min(cfg['duration'], cfg['rate'], cfg['width'], cfg['height']) <= 0:
        raise SystemExit('bench recorder: --duration, --rate, --width, --height must be > 0')
    if args.output:
        out_dir = Path(args.output)
        out_dir.mkdir(parents=True, exist_ok=True)
        cleanup = False
    else:
        out_dir = Path(tempfile.mkdtemp(prefix='qail_bench_recorder_'))
        cleanup = not args.keep
    try:
        res = _run(cfg, out_dir)
    finally:
        if cleanup:
            shutil.rmtree(out_dir, ignore_errors=True)
    res['output'] = None if cleanup else str(out_dir)
    res.update(report.environment())
    report.table(
        f"recorder: {res['width']}x{res['height']} rgb8 at {res['rate_hz']:g} Hz for "
        f"{res['duration_s']:g} s ({res['storage']}), recorder in its own process",
        ['published', 'recorded', 'dropped', 'queue drops', 'recorder CPU %', 'RSS MB',
         'bag MB'],
        [[res['published'], res['recorded'], res['dropped'], res['recorder_queue_drops'],
          res['recorder_cpu_percent'], res['recorder_rss_mb'], res['bag_bytes'] / 1e6]])
    if getattr(args, 'json', False):
        report.emit_json(res)
    return 0 if res['dropped'] == 0 else 1
