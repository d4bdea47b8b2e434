"""`qail-ros router`: run the Zenoh router that embedded-runtime processes meet through.

The same role as rmw_zenoh's `ros2 run rmw_zenoh_cpp rmw_zenohd`: peers connect to it, learn
about each other (gossip scouting) and then link directly. It is a zenoh-python session opened
in router mode, so no zenohd binary is needed. Runs until Ctrl-C. Reads
`ZENOH_ROUTER_CONFIG_URI` (and `ZENOH_CONFIG_OVERRIDE`) as rmw_zenohd does; without them it
listens on this host only. `--parent PID` also stops it when process PID ends: that is how
the runtime's `ensure_router` (a launch, a benchmark) starts its own router as a child process.
"""
from __future__ import annotations

import os
import sys

HELP = 'run a Zenoh router (what rmw_zenohd is for rmw_zenoh) until Ctrl-C'


def add_arguments(parser) -> None:
    parser.add_argument('--listen', default=None, metavar='ENDPOINT',
                        help='endpoint to listen on (default: the listen endpoints of '
                             '$ZENOH_ROUTER_CONFIG_URI, else $QAIL_ROS_ZENOH_ROUTER or '
                             'tcp/127.0.0.1:7447: this host only)')
    parser.add_argument('--parent', type=int, default=None, metavar='PID',
                        help='also stop when process PID ends (a router started for a launch)')


def main(args) -> int:
    from qail_ros.errors import TransportError
    from qail_ros.runtime import zenoh_transport as zt
    endpoints = zt.router_listen_endpoints(args.listen)
    for endpoint in endpoints:
        if zt.router_reachable(endpoint):
            if zt.probe_router(endpoint) is not None:
                raise TransportError(f'a Zenoh router already listens on {endpoint}: use it, '
                                     'or pick another endpoint with --listen')
            zt.check_router(endpoint)   # raises, naming the program that holds the port
    where = ', '.join(endpoints)
    config = os.environ.get(zt.ROUTER_CONFIG_ENV, '').strip()

    def ready(zid: str) -> None:
        print(f'Zenoh router {zid} listening on {where}'
              + (f' ({zt.ROUTER_CONFIG_ENV}={config})' if config else ' (this host only)')
              + '; domain set per node by ROS_DOMAIN_ID; Ctrl-C to stop', file=sys.stderr,
              flush=True)

    if args.parent is not None:
        zt.run_router(args.listen, ready=ready, stop=_stop_event(args.parent))
        return 0
    _sigterm_as_interrupt()
    try:
        zt.run_router(args.listen, ready=ready)
    except KeyboardInterrupt:
        pass
    return 0


def _stop_event(parent: int):
    """The stop of a router started for process `parent`: an Event set by SIGINT / SIGTERM or
    within ~0.5 s of `parent` ending (the router then closes its session and exits 0)."""
    import signal
    import threading
    stop = threading.Event()

    def on_signal(_signum, _frame) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    def watch() -> None:
        while not stop.wait(0.5):
            if os.getppid() != parent:
                stop.set()

    threading.Thread(target=watch, daemon=True).start()
    return stop


def _sigterm_as_interrupt() -> None:
    """`kill` (SIGTERM, what launchers and systemd send) stops the router like Ctrl-C."""
    import signal
    import threading
    if threading.current_thread() is not threading.main_thread():
        return

    def handler(_signum, _frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, handler)
