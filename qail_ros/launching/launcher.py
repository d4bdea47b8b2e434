"""Run the nodes of a launch description without ROS 2: `qail-ros launch NAME`.

Two modes run the same `LaunchSpec` (qail_ros.launching.description):

* **processes** (default): every node is a child process, `python -m <module> [arguments]
  --ros-args -r __node:=NAME [-r __ns:=NS] --params-file FILE ... -r from:=to ...`, the module
  taken from qail_ros/nodes/registry.py (the list setup.py makes the `ros2 run` executables
  from). Output is line-prefixed `[name]`. Each child runs in its own process group (session),
  so a terminal's Ctrl-C reaches only the launcher, which then shuts the children down in
  order: SIGINT to every group, SIGTERM to what is left after `sigint_timeout_s`, SIGKILL after
  `sigterm_timeout_s` more, then a sweep of every group so that no grandchild survives. Children
  also get SIGTERM from the kernel if the launcher itself dies (PR_SET_PDEATHSIG on Linux).
  A child that exits with an error stops the whole launch (as if every node were launched with
  `on_exit=Shutdown()`): a pipeline with a dead stage only produces misleading output.
  A child that exits cleanly on its own is reported and the others keep running, unless the
  launch names it in its `required_nodes` argument: a required node (the recorder of a record
  launch, the policy of a drive launch) that exits in any way while the launch runs stops
  everything with exit code 1 and a line naming it.
  Before the nodes start, an existing router must answer as a Zenoh router; a port held by
  another program is an error naming the port and that program. With a secure profile
  (`--secure DIR`, scripts/make_secure_profile.sh) the router and every node use its
  mutual-TLS configuration, each node the certificate of its own name (docs/security.md).
* **composed** (`--composed`): every node in this process through `nodes_main`, each with its own
  `--ros-args`; topics between them pass Python objects, never serialised.

Dict parameters of a launch file become temporary parameter files with a `/**:` section, as
launch_ros writes them, so file / dict order keeps its meaning (later entries win).
"""
from __future__ import annotations

import contextlib
import dataclasses
import importlib
import inspect
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from typing import IO, Any

import yaml

from qail_ros.errors import LaunchError
from qail_ros.launching.description import LaunchSpec, NodeSpec
from qail_ros.runtime import params as _params

__all__ = ['node_targets', 'node_module', 'node_class', 'ros_argv', 'check_parameter_files',
           'ProcessLauncher', 'ChildProcess', 'run_composed', 'PACKAGE', 'SecureProfile',
           'secure_profile', 'SECURE_PROFILE_ENV']

PACKAGE = 'qail_ros'
_PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


# ------------------------------------------------------------------------------------------
# executables
# ------------------------------------------------------------------------------------------
def node_targets() -> dict[str, str]:
    """executable -> 'module:function', from qail_ros/nodes/registry.py."""
    from qail_ros.nodes.registry import NODES
    return dict(NODES)


def _target(spec: NodeSpec) -> str:
    if spec.package not in (None, PACKAGE):
        raise LaunchError(
            f"node '{spec.label}' is from package '{spec.package}'; the qail_ros embedded "
            f"launcher starts only {PACKAGE} executables (use ros2 launch for the others)")
    targets = node_targets()
    try:
        return targets[spec.executable]
    except KeyError:
        raise LaunchError(
            f"'{spec.executable}' is not a {PACKAGE} executable; the executables are "
            f"{', '.join(sorted(targets))} (qail_ros/nodes/registry.py)") from None


def node_module(spec: NodeSpec) -> str:
    """The module `python -m` runs for a node."""
    return _target(spec).split(':', 1)[0]


def node_class(spec: NodeSpec) -> type:
    """The one `Node` subclass of a node's module (what composition instantiates).

    A module may name it explicitly with `NODE_CLASS = TheNode`.
    """
    from qail_ros.runtime.node import Node
    module_name = node_module(spec)
    module = importlib.import_module(module_name)
    explicit = getattr(module, 'NODE_CLASS', None)
    if explicit is not None:
        return explicit
    found = [obj for obj in vars(module).values()
             if inspect.isclass(obj) and issubclass(obj, Node) and obj is not Node
             and obj.__module__ == module.__name__]
    if len(found) != 1:
        raise LaunchError(
            f'{module_name} defines {len(found)} Node subclasses '
            f'({", ".join(c.__name__ for c in found) or "none"}); composition needs exactly '
            'one, or NODE_CLASS = TheNode in the module')
    return found[0]


# ------------------------------------------------------------------------------------------
# arguments
# ------------------------------------------------------------------------------------------
def ros_argv(spec: NodeSpec, tmpdir: str) -> list[str]:
    """The command-line arguments a launcher passes the node (`arguments` then `--ros-args`)."""
    out = list(spec.arguments) + ['--ros-args']
    if spec.name:
        out += ['-r', f'__node:={spec.name}']
    if spec.namespace:
        out += ['-r', f'__ns:={spec.namespace}']
    for i, entry in enumerate(spec.parameters):
        if isinstance(entry, str):
            out += ['--params-file', entry]
        else:
            # launch_ros keys the file by the node's full name when name and namespace are both
            # given, else by '/**'; so do we.
            key = spec.fully_qualified_name if spec.name and spec.namespace else '/**'
            path = os.path.join(tmpdir, f'{spec.label}_params_{i}.yaml')
            with open(path, 'w', encoding='utf-8') as f:
                yaml.safe_dump({key: {'ros__parameters': entry}}, f, sort_keys=False)
            out += ['--params-file', path]
    for src, dst in spec.remappings:
        out += ['-r', f'{src}:={dst}']
    out += list(spec.ros_arguments)
    return out


def check_parameter_files(launch: LaunchSpec) -> None:
    """A parameter file's node sections must each name a node of the launch (typo check).

    Files used by a node without a `name=` are skipped: its name is only known at run time.
    """
    users: dict[str, list[NodeSpec]] = {}
    for node in launch.nodes:
        for path in node.parameter_files:
            users.setdefault(path, []).append(node)
    for path, nodes in users.items():
        if any(n.name is None for n in nodes):
            continue
        _params.check_sections(path, _params.load_params_file(path),
                               [n.fully_qualified_name for n in nodes])


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    env['PYTHONPATH'] = os.pathsep.join(p for p in (_PACKAGE_ROOT, env.get('PYTHONPATH')) if p)
    env['PYTHONUNBUFFERED'] = '1'
    return env


# ------------------------------------------------------------------------------------------
# secure profile (scripts/make_secure_profile.sh, docs/security.md)
# ------------------------------------------------------------------------------------------
SECURE_PROFILE_ENV = 'QAIL_ROS_SECURE_PROFILE'
_SESSION_ENV = 'ZENOH_SESSION_CONFIG_URI'
_ROUTER_ENV = 'ZENOH_ROUTER_CONFIG_URI'


@dataclasses.dataclass
class SecureProfile:
    """A directory made by scripts/make_secure_profile.sh: router.json5 for the router, and
    NAME.json5 (a session with NAME's certificate) for each node NAME and the launcher."""

    directory: str

    def session_file(self, identity: str) -> str:
        path = os.path.join(self.directory, f'{identity}.json5')
        if not os.path.isfile(path):
            raise LaunchError(
                f"secure profile {self.directory} has no identity '{identity}' ({path}): make "
                f'one with scripts/make_secure_profile.sh {self.directory} {identity} (the '
                "ACL of the profile's router.json5 must list it, which the script does when "
                'it makes every identity in one run)')
        return path

    @property
    def router_file(self) -> str:
        path = os.path.join(self.directory, 'router.json5')
        if not os.path.isfile(path):
            raise LaunchError(f'{self.directory} is not a secure profile (no router.json5): '
                              'make one with scripts/make_secure_profile.sh DIR')
        return path

    def check(self, launch: LaunchSpec) -> None:
        self.router_file  # noqa: B018 - raises when missing
        for identity in ['launcher'] + [n.label for n in launch.nodes]:
            self.session_file(identity)

    def apply(self) -> str:
        """The launcher's own sessions (router check) and the router it starts use the
        profile; `child_env` gives each node its own identity. The profile's files say where
        the router is, so QAIL_ROS_ZENOH_ROUTER is dropped (returns a note saying so)."""
        os.environ[_ROUTER_ENV] = self.router_file
        os.environ[_SESSION_ENV] = self.session_file('launcher')
        dropped = os.environ.pop('QAIL_ROS_ZENOH_ROUTER', None)
        return (f'; QAIL_ROS_ZENOH_ROUTER={dropped} ignored (the profile names the router)'
                if dropped else '')

    def child_env(self, env: dict[str, str], identity: str) -> dict[str, str]:
        out = dict(env)
        out.pop('QAIL_ROS_ZENOH_ROUTER', None)
        out[_ROUTER_ENV] = self.router_file
        out[_SESSION_ENV] = self.session_file(identity)
        return out


def secure_profile(directory: str | None = None) -> SecureProfile | None:
    """The profile of `directory`, else of $QAIL_ROS_SECURE_PROFILE, else None."""
    directory = directory or os.environ.get(SECURE_PROFILE_ENV, '').strip() or None
    if directory is None:
        return None
    if not os.path.isdir(directory):
        raise LaunchError(f"secure profile '{directory}' is not a directory: make one with "
                          f'scripts/make_secure_profile.sh {directory}')
    return SecureProfile(os.path.abspath(directory))


def _start_router(say) -> Any:
    """Start a Zenoh router for the embedded runtime if the children need one and none runs.

    An existing one must answer as a Zenoh router (its id is shown); a port held by another
    program is a TransportError naming the port and the program.
    """
    from qail_ros.runtime import runtime_name
    if runtime_name() != 'embedded' or os.environ.get('QAIL_ROS_TRANSPORT', '').strip().lower() \
            == 'none':
        return None
    try:
        from qail_ros.runtime import zenoh_transport as zt
    except ImportError as exc:
        say(f'no Zenoh transport ({exc}); nodes will not reach each other')
        return None
    endpoint = zt.router_endpoint()
    if zt.router_reachable(endpoint):
        zid = zt.check_router(endpoint)
        say(f'using the Zenoh router {zid[:8]} already at {endpoint}')
        return None
    router = zt.ensure_router(endpoint)
    if router is not None:
        say(f'started a Zenoh router on {router.endpoint} (pid {router.pid})'
            + (f' with {os.environ[_ROUTER_ENV]}' if os.environ.get(_ROUTER_ENV) else ''))
    return router


# ------------------------------------------------------------------------------------------
# process mode
# ------------------------------------------------------------------------------------------
def _pdeathsig() -> None:  # runs in the child between fork and exec
    if _prctl is not None:
        _prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


try:  # looked up before any fork: nothing may be loaded in the child before exec
    import ctypes
    _prctl = ctypes.CDLL(None, use_errno=True).prctl if sys.platform.startswith('linux') else None
except (OSError, AttributeError):
    _prctl = None


@dataclasses.dataclass
class ChildProcess:
    spec: NodeSpec
    argv: list[str]
    process: subprocess.Popen | None = None
    reader: threading.Thread | None = None
    reported: bool = False

    @property
    def label(self) -> str:
        return self.spec.label

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid


class ProcessLauncher:
    """Starts each node of a LaunchSpec as a child process and owns their shutdown."""

    def __init__(self, launch: LaunchSpec, *, out: IO[str] | None = None,
                 sigint_timeout_s: float = 1.0, sigterm_timeout_s: float = 0.5,
                 start_router: bool = True, secure: SecureProfile | None = None):
        self.launch = launch
        self.secure = secure
        self.out = out or sys.stdout
        self.sigint_timeout_s = sigint_timeout_s
        self.sigterm_timeout_s = sigterm_timeout_s
        self.start_router = start_router
        self.children: list[ChildProcess] = []
        self.router = None
        self._print_lock = threading.Lock()
        self._stop = threading.Event()
        self._stop_reason = ''
        self._signals = 0
        self._tmpdir: str | None = None

    # -- output -------------------------------------------------------------------------------
    def say(self, text: str) -> None:
        self._emit('launcher', text)

    def _emit(self, label: str, line: str) -> None:
        with self._print_lock:
            try:
                self.out.write(f'[{label}] {line}\n')
                self.out.flush()
            except (ValueError, OSError):  # output closed (pipe gone): keep shutting down
                pass

    def _pump(self, child: ChildProcess) -> None:
        assert child.process is not None and child.process.stdout is not None
        for raw in iter(child.process.stdout.readline, b''):
            self._emit(child.label, raw.decode('utf-8', errors='replace').rstrip('\r\n'))
        child.process.stdout.close()

    # -- signals ------------------------------------------------------------------------------
    def request_stop(self, reason: str) -> None:
        if not self._stop.is_set():
            self._stop_reason = reason
        self._stop.set()

    def _on_signal(self, signum, _frame) -> None:
        self._signals += 1
        self.request_stop(f'{signal.Signals(signum).name} received')

    @contextlib.contextmanager
    def _signal_handlers(self):
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        old = {s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for s, handler in old.items():
                signal.signal(s, handler)

    # -- run ----------------------------------------------------------------------------------
    def build(self) -> list[ChildProcess]:
        """The children's command lines (writes dict parameters to a temporary folder)."""
        check_parameter_files(self.launch)
        if self._tmpdir is None:
            self._tmpdir = tempfile.mkdtemp(prefix='qail_ros_launch_')
        children = []
        for spec in self.launch.nodes:
            module = node_module(spec)
            argv = [sys.executable, '-m', module] + ros_argv(spec, self._tmpdir)
            children.append(ChildProcess(spec, argv))
        labels = [c.label for c in children]
        dupes = sorted({n for n in labels if labels.count(n) > 1})
        if dupes:
            raise LaunchError(f'{self.launch.path.name} starts several nodes named {dupes}; '
                              "give each a distinct name= so they don't clash on the graph")
        return children

    def run(self, duration_s: float | None = None) -> int:
        """Start every node, wait for Ctrl-C / SIGTERM / `duration_s` / a failure, stop all.

        Returns 0 when the launch ran until asked to stop (or every node finished cleanly),
        1 when a node failed.
        """
        code = 0
        with self._signal_handlers():
            try:
                self.children = self.build()
                if self.secure is not None:
                    self.secure.check(self.launch)
                    note = self.secure.apply()
                    self.say(f'secure profile {self.secure.directory}: mutual TLS, access '
                             f'control; each node with its own certificate{note}')
                if self.start_router:
                    self.router = _start_router(self.say)
                env = _child_env()
                required = [c.label for c in self.children if c.spec.required]
                if required:
                    self.say(f'required nodes (the launch stops if one exits): '
                             f'{", ".join(required)}')
                for child in self.children:
                    if self._stop.is_set():
                        break
                    child_env = (env if self.secure is None
                                 else self.secure.child_env(env, child.label))
                    child.process = subprocess.Popen(
                        child.argv, env=child_env, stdin=subprocess.DEVNULL,
                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
                        preexec_fn=_pdeathsig if _prctl is not None else None)
                    child.reader = threading.Thread(target=self._pump, args=(child,),
                                                    name=f'launch-{child.label}', daemon=True)
                    child.reader.start()
                    self.say(f'started {child.label} (pid {child.pid}): '
                             f'{" ".join(child.argv[1:4])} ...')
                code = self._supervise(duration_s)
            finally:
                self.shutdown()
        return code

    def _supervise(self, duration_s: float | None) -> int:
        end = None if duration_s is None else time.monotonic() + duration_s
        code = 0
        while not self._stop.is_set():
            running = 0
            for child in self.children:
                if child.process is None:
                    continue
                rc = child.process.poll()
                if rc is None:
                    running += 1
                elif not child.reported:
                    child.reported = True
                    if child.spec.required and not (rc == 0 and child.spec.shutdown_on_exit):
                        self.say(f'required node {child.label} exited ({_describe(rc)}) '
                                 'while the launch was running; stopping the other nodes')
                        code = 1
                        self.request_stop(f'required node {child.label} exited')
                    elif rc == 0:
                        self.say(f'{child.label} finished (exit code 0)')
                        if child.spec.shutdown_on_exit:
                            self.request_stop(f'{child.label} exited (on_exit=Shutdown)')
                    else:
                        self.say(f'{child.label} failed ({_describe(rc)}); stopping the other '
                                 'nodes')
                        code = 1
                        self.request_stop(f'{child.label} failed')
            if self._stop.is_set():
                break
            if running == 0 and self.children:
                self.say('every node has exited')
                break
            if end is not None and time.monotonic() >= end:
                self.request_stop(f'duration of {duration_s:g} s reached')
                break
            self._stop.wait(0.05)
        return code

    def shutdown(self) -> None:
        """SIGINT -> SIGTERM -> SIGKILL to every child's process group, then sweep the groups."""
        start = time.monotonic()
        alive = [c for c in self.children if c.process is not None and c.process.poll() is None]
        if alive:
            self.say(f'{self._stop_reason or "stopping"}: sending SIGINT to '
                     f'{", ".join(c.label for c in alive)}')
        self._escalate(alive, signal.SIGINT, self.sigint_timeout_s)
        self._escalate(alive, signal.SIGTERM, self.sigterm_timeout_s)
        self._escalate(alive, signal.SIGKILL, 1.0)
        for child in self.children:
            if child.process is None:
                continue
            _killpg(child.pid, signal.SIGKILL)  # grandchildren left in the group
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.process.wait(1.0)
            if child.reader is not None:
                child.reader.join(0.5)
            if child.process.returncode is not None and not child.reported:
                child.reported = True
                rc = child.process.returncode
                if rc != 0:
                    self.say(f'{child.label} exited ({_describe(rc)})')
        nodes_s = time.monotonic() - start
        if self.router is not None:
            router, self.router = self.router, None
            router.stop(timeout_s=0.5)
        if self._tmpdir is not None:
            shutil.rmtree(self._tmpdir, ignore_errors=True)
            self._tmpdir = None
        if alive:
            self.say(f'stopped: nodes in {nodes_s:.2f} s, everything in '
                     f'{time.monotonic() - start:.2f} s')

    def _escalate(self, children: list[ChildProcess], sig: int, timeout_s: float) -> None:
        left = [c for c in children if c.process.poll() is None]
        if not left:
            return
        if sig != signal.SIGINT:
            self.say(f'sending {signal.Signals(sig).name} to '
                     f'{", ".join(c.label for c in left)}')
        for child in left:
            _killpg(child.pid, sig)
        signals = self._signals
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if all(c.process.poll() is not None for c in left):
                return
            if self._signals > max(signals, 1):  # Ctrl-C again: escalate at once
                return
            time.sleep(0.01)


def _killpg(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _describe(rc: int) -> str:
    if rc < 0:
        try:
            return f'killed by {signal.Signals(-rc).name}'
        except ValueError:
            return f'killed by signal {-rc}'
    return f'exit code {rc}'


# ------------------------------------------------------------------------------------------
# composed mode
# ------------------------------------------------------------------------------------------
def run_composed(launch: LaunchSpec, duration_s: float | None = None,
                 out: IO[str] | None = None) -> int:
    """Every node of the launch in this process (one executor; intra-process topics)."""
    from qail_ros.runtime.node import nodes_main, prepare_fast_exit
    out = out or sys.stdout
    check_parameter_files(launch)
    tmpdir = tempfile.mkdtemp(prefix='qail_ros_launch_')
    router = None
    try:
        entries = [(node_class(spec), ros_argv(spec, tmpdir)) for spec in launch.nodes]
        router = _start_router(lambda text: print(f'[launcher] {text}', file=out, flush=True))
        print(f'[launcher] composing {", ".join(s.label for s in launch.nodes)} in process '
              f'{os.getpid()}', file=out, flush=True)
        code = nodes_main(entries, args=[sys.argv[0] if sys.argv else 'qail-ros'],
                          duration_s=duration_s)
        prepare_fast_exit()  # the command ends here
        return code
    finally:
        if router is not None:
            router.stop(timeout_s=0.5)
        shutil.rmtree(tmpdir, ignore_errors=True)
