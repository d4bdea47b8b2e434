"""PolicyNode: what every policy node shares, so a policy node supplies only its parts.

    class CILRSPolicy(PolicyNode):
        NODE_NAME = 'cilrs_policy'
        PARAMETERS = (ParameterSpec('engine', DEFAULT_ENGINE, '...', read_only=True), ...)
        def create_outputs(self): ...          # its publishers (the actuator topics)
        def load(self): ...                    # which engine to load (on_configure)
        def to_inputs(self, msg): ...          # input message -> tensors (preprocess)
        def run(self, inputs): ...             # the engine (inference)
        def to_outputs(self, msg, result): ... # -> PolicyOutputs: messages, raw outputs, log
        def safe_outputs(self): ...            # the safe command: [(publisher, message)]

The base does the rest, the same way in every node:

* **Input.** One subscription (`INPUT_TYPE` on `input_topic()`; latest frame, best effort
  depth 1, with a worker thread when `LATEST_FRAME`, else inference in the callback). Images
  are checked before anything is allocated or decoded (`check_image`: known encoding, not
  0x0, at most `max_image_width` x `max_image_height` and `max_image_bytes`, step and data
  length consistent, no NaN / inf in float images); an instruction (`INSTRUCTION`) before it
  is tokenised (`max_instruction_bytes`, then `max_instruction_tokens`): a rejected
  instruction leaves the previous one in force, and the warning names the limit.
* **Timing, raw outputs, policy_io.** `~/policy_timing` and `~/raw_outputs` per inference.
* **Fail-safe.** The node's safe command (`safe_outputs`: zero twist, brake, zero action) is
  published on the actuator topics when an input is invalid, inference fails, no valid input
  came for `input_timeout_s` (a watchdog on the node's clock; it also covers the engine still
  loading), and at shutdown (SIGINT / SIGTERM: on_deactivate). While the fail-safe is active it
  is repeated every `input_timeout_s / 4`; the next normal action ends it. Safe commands carry
  stamp 0: they answer no input (a dataset never pairs them with a frame, a simulator bridge
  in synchronous mode does not take them for the answer to its frame; ros2_controllers reads a
  zero stamp as "now").
* **Diagnostics.** diagnostic_msgs/DiagnosticArray on /diagnostics every
  `diagnostics_period_s` (1 s): OK, WARN (inputs dropped or rejected, instructions refused,
  engine loading, the Zenoh router lost or lost in the period), ERROR (the fail-safe was
  active in the period), STALE (no input yet), with the counters (received, dropped, rejected
  by reason, inference errors, fail-safe activations, safe commands, outputs, router losses),
  the router state and the last error.
* **Logs** are rate-limited with counts: the first problem of a kind at once, then one line
  per `PROBLEM_LOG_PERIOD_S` ('37 rejected frames in 5 s (encoding x37); last: ...'), never
  silent.
* **Parameters** are declared once (`ParameterSpec`: type, range, description, read-only when
  a change needs a reload); a set at run time is checked and applied (max_rate_hz,
  log_period_s, input_timeout_s, limits, instruction ...) or refused with the reason.
"""
from __future__ import annotations

import collections
import dataclasses
import socket
import threading
import time
from typing import Any

import numpy as np

from qail_ros import messages, policy_io
from qail_ros.errors import ImageEncodingError, ParameterError
from qail_ros.nodes.latest_frame import LATEST_FRAME, LatestFrameWorker, TimingLog, queue_drops
from qail_ros.runtime import Node
from qail_ros.runtime.params import ParameterSpec

__all__ = ['PolicyNode', 'ArmPolicyNode', 'PolicyOutputs', 'InputRejected', 'ProblemLog',
           'check_image', 'twist_message', 'zero_stamp_header', 'shorten', 'OK', 'WARN',
           'ERROR', 'STALE', 'PROBLEM_LOG_PERIOD_S']

OK, WARN, ERROR, STALE = 0, 1, 2, 3
LEVEL_NAMES = {OK: 'OK', WARN: 'WARN', ERROR: 'ERROR', STALE: 'STALE'}

#: Seconds between the summary lines of a repeated problem (the first one is logged at once).
PROBLEM_LOG_PERIOD_S = 5.0


def shorten(text: str, limit: int = 60) -> str:
    """`text` cut to `limit` characters for a log line (never a 200 kB line)."""
    return text if len(text) <= limit else f'{text[:limit]}... ({len(text)} characters)'


class InputRejected(Exception):
    """An input that breaks a limit; `reason` is its counter key ('encoding', 'oversized')."""

    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason = reason


@dataclasses.dataclass
class PolicyOutputs:
    """What `to_outputs` returns: the messages to publish in order, the raw outputs
    (policy_io), the action (returned by `step`), and the prefix of the log line."""

    messages: list[tuple[Any, Any]]
    raw: np.ndarray
    raw_name: str
    value: Any
    log: str
    #: (preprocess_ms, inference_ms) measured inside `run` (a model whose predict does its
    #: own preprocessing); None: run() is all inference
    run_split_ms: tuple[float, float] | None = None


def check_image(msg: Any, max_width: int, max_height: int, max_bytes: int) -> None:
    """Raise InputRejected when a sensor_msgs/Image breaks a limit; reads only its header
    fields (and, for float encodings, checks the values are finite)."""
    from qail_ros.image import ENCODINGS
    enc = msg.encoding
    info = ENCODINGS.get(enc) if isinstance(enc, str) else None
    if info is None:
        raise InputRejected('encoding', f'encoding {shorten(str(enc), 32)!r} is not supported '
                                        f'(supported: {", ".join(ENCODINGS)})')
    width, height, step = int(msg.width), int(msg.height), int(msg.step)
    if width == 0 or height == 0:
        raise InputRejected('empty', f'{width}x{height} image')
    if width > max_width or height > max_height:
        raise InputRejected('oversized', f'{width}x{height} is over max_image_width x '
                                         f'max_image_height ({max_width}x{max_height})')
    size = len(msg.data)
    if size > max_bytes or step * height > max_bytes:
        raise InputRejected('oversized', f'{max(size, step * height)} bytes is over '
                                         f'max_image_bytes ({max_bytes})')
    row = width * info.channels * info.dtype.itemsize
    if step < row:
        raise InputRejected('step', f'step {step} is smaller than width x bytes per pixel '
                                    f'({row}, {width} wide {enc})')
    if size < step * height:
        raise InputRejected('short_data', f'data holds {size} bytes, step x height = '
                                          f'{step * height} ({width}x{height} {enc})')
    if info.dtype.kind == 'f':
        from qail_ros.image import to_numpy
        values = to_numpy(msg, desired='passthrough')
        bad = int(values.size - np.count_nonzero(np.isfinite(values)))
        if bad:
            raise InputRejected('non_finite', f'{bad} NaN / inf values in a {width}x{height} '
                                              f'{enc} image')


class ProblemLog:
    """Rate-limited warnings with counts: the first problem of each kind is logged at once,
    later ones are counted and summarised once per `period_s` (on the next report or
    `flush()`, which the diagnostics timer calls), so a problem is never silent after the
    first line and never floods the log."""

    def __init__(self, logger, period_s: float = PROBLEM_LOG_PERIOD_S):
        self.logger = logger
        self.period_s = float(period_s)
        self._lock = threading.Lock()
        self._since: dict[str, float] = {}
        self._counts: dict[str, collections.Counter] = {}
        self._last: dict[str, str] = {}
        self._seen: set[tuple[str, str]] = set()

    def report(self, group: str, kind: str, detail: str) -> None:
        """One problem: `group` ('rejected frames'), `kind` ('encoding'), `detail` (text)."""
        now = time.monotonic()
        with self._lock:
            first = (group, kind) not in self._seen
            self._seen.add((group, kind))
            if group not in self._since:
                self._since[group] = now
                self._counts[group] = collections.Counter()
            if not first:
                self._counts[group][kind] += 1
                self._last[group] = detail
        if first:
            self.logger.warning(f'{group}: {kind}: {detail} (repeats are counted and logged '
                                f'every {self.period_s:g} s)')
        else:
            self.flush(now)

    def flush(self, now: float | None = None, force: bool = False) -> None:
        """Log the summaries whose period is over (`force`: every pending one, at shutdown)."""
        now = time.monotonic() if now is None else now
        lines = []
        with self._lock:
            for group, since in self._since.items():
                counts = self._counts[group]
                if not counts or (now - since < self.period_s and not force):
                    continue
                total = sum(counts.values())
                kinds = ', '.join(f'{k} x{n}' for k, n in counts.most_common(4))
                lines.append(f'{total} {group} in {now - since:.2g} s ({kinds}); last: '
                             f'{self._last[group]}')
                self._counts[group] = collections.Counter()
                self._since[group] = now
        for line in lines:
            self.logger.warning(line)


class PolicyNode(Node):
    """Base of the policy nodes; see the module docstring."""

    NODE_NAME = 'policy'
    #: what one output is called in logs ('actions', 'controls')
    OUTPUTS = 'actions'
    #: what one input is called ('frames', 'states')
    INPUTS = 'frames'
    INPUT_TYPE = 'sensor_msgs/msg/Image'
    #: True: a worker thread infers on the newest input; False: inference in the callback
    LATEST_FRAME = True
    #: True: an `instruction` parameter and topic, with their limits
    INSTRUCTION = False
    #: defaults of the common parameters that differ between nodes
    INPUT_TIMEOUT_S = 0.5
    LOG_PERIOD_S = 1.0
    #: the node's own parameters (the common ones come from `common_parameters`)
    PARAMETERS: tuple[ParameterSpec, ...] = ()
    #: what the safe command is, for the logs and docs
    SAFE_COMMAND = 'safe command'

    def __init__(self, **kwargs):
        super().__init__(self.NODE_NAME, **kwargs)
        self._lock = threading.RLock()
        self.declare_parameters(self.common_parameters() + tuple(self.PARAMETERS))
        self.check_parameters()
        if self.INSTRUCTION:
            problem = self.instruction_problem(self.instruction, tokens=False)
            if problem:
                raise ParameterError(f"node '{self.get_name()}': instruction: {problem}")
        self.inferences = 0
        self.last_action = None
        # counters (diagnostics)
        self.rejected: collections.Counter = collections.Counter()
        self.rejected_in_callback = 0
        self.instructions_rejected = 0
        self.inference_errors = 0
        self.failsafe_activations = 0
        self.safe_commands = 0
        self.last_error = ''
        # fail-safe state (on the node's clock)
        self.failsafe: str | None = None      # the kind while active ('input_timeout', ...)
        self.failsafe_detail = ''
        self.failsafe_started_ns = 0          # node clock, the last activation
        self.last_failsafe_kind = ''
        self._last_valid_ns = self.now_ns()   # start: the watchdog covers the loading
        self._had_input = False
        self._last_safe_ns = 0
        self._loading = False
        self._window = collections.Counter()  # problems since the last diagnostics
        self._diag_outputs = 0
        self._timers_running: list = []
        self.problems = ProblemLog(self.get_logger())
        self.timing_log = TimingLog(self.log_period_s)
        self.worker = LatestFrameWorker(self._process, name=self.NODE_NAME,
                                        max_rate_hz=float(getattr(self, 'max_rate_hz', 0.0)),
                                        logger=self.get_logger())
        self.create_outputs()
        self.timing_pub = self.create_publisher('std_msgs/msg/Float64MultiArray',
                                                '~/policy_timing', 10)
        self.raw_pub = self.create_publisher('std_msgs/msg/Float64MultiArray', '~/raw_outputs',
                                             10)
        self.diag_pub = self.create_publisher('diagnostic_msgs/msg/DiagnosticArray',
                                              '/diagnostics', 10)
        self.input_sub = self.create_subscription(
            self.INPUT_TYPE, self.input_topic(), self.input_callback,
            LATEST_FRAME if self.LATEST_FRAME else 10)
        if self.INSTRUCTION:
            self.instruction_sub = self.create_subscription(
                'std_msgs/msg/String', 'instruction', self.instruction_callback, 10)
        self.create_inputs()
        self._hardware_id = socket.gethostname()

    # -- parameters -------------------------------------------------------------------------
    def common_parameters(self) -> tuple[ParameterSpec, ...]:
        specs = []
        if self.LATEST_FRAME:
            specs.append(ParameterSpec('max_rate_hz', 0.0, 'most inferences per second; 0 = '
                                       'one per new frame', min=0.0))
        specs += [
            ParameterSpec('log_period_s', self.LOG_PERIOD_S, 'seconds between action log '
                          'lines; 0 = every action', min=0.0),
            ParameterSpec('input_timeout_s', self.INPUT_TIMEOUT_S, 'fail-safe watchdog: '
                          'seconds without a valid input (the engine loading included) before '
                          'the safe command is published', min=0.0, min_exclusive=True),
            ParameterSpec('diagnostics_period_s', 1.0, 'seconds between /diagnostics '
                          'messages', min=0.0, min_exclusive=True, read_only=True)]
        if self.INPUT_TYPE == 'sensor_msgs/msg/Image':
            specs += [
                ParameterSpec('max_image_width', 4096, 'wider frames are rejected', min=1),
                ParameterSpec('max_image_height', 4096, 'taller frames are rejected', min=1),
                ParameterSpec('max_image_bytes', 64 * 1024 * 1024, 'frames with more data '
                              'are rejected', min=1)]
        if self.INSTRUCTION:
            specs += [
                ParameterSpec('instruction', '', 'language instruction (the instruction topic '
                              'replaces it)'),
                ParameterSpec('max_instruction_bytes', 1024, 'longer instructions (UTF-8 '
                              'bytes) are refused; the previous one stays', min=1),
                ParameterSpec('max_instruction_tokens', 64, 'instructions of more tokens are '
                              'refused; the previous one stays', min=1)]
        return tuple(specs)

    def check_parameters(self) -> None:
        """Checks between parameters (ranges are the specs'): raise ParameterError."""

    def on_parameter_change(self, name: str, value: Any) -> str | None:
        if name == 'max_rate_hz':
            self.worker.set_rate(float(value))
        elif name == 'log_period_s':
            self.timing_log.period_s = float(value)
        elif name == 'input_timeout_s' and self._timers_running:
            # the watchdog checks every timeout / 4: a new timer for the new period
            self._timers_running[0].cancel()
            self._timers_running[0] = self.create_timer(max(float(value) / 4.0, 0.005),
                                                        self.watchdog_callback)
        elif name == 'instruction':
            problem = self.instruction_problem(value)
            if problem:
                return problem
        return None

    # -- what a policy node supplies -----------------------------------------------------------
    def input_topic(self) -> str:
        return 'image_raw'

    def create_outputs(self) -> None:
        """Create the output publishers (the actuator topics)."""

    def create_inputs(self) -> None:
        """Create further subscriptions (speed, command ...)."""

    def load(self) -> None:
        """Load the engine (on_configure); ParameterError naming the problem and the fix."""

    #: what load() loads (an engine of qail_ros.engines); ArmPolicyNode uses `policy`
    engine = None

    def unload(self) -> None:
        """Free what load() loaded (on_cleanup)."""
        self.engine = None

    @property
    def loaded(self) -> bool:
        return self.engine is not None

    def to_inputs(self, msg: Any) -> Any:
        raise NotImplementedError

    def run(self, inputs: Any) -> Any:
        raise NotImplementedError

    def to_outputs(self, msg: Any, result: Any) -> PolicyOutputs:
        raise NotImplementedError

    def safe_outputs(self) -> list[tuple[Any, Any]]:
        """[(publisher, message)] of the safe command; [] while it cannot be formed yet."""
        return []

    def check_input(self, msg: Any) -> None:
        """Raise InputRejected for an input that breaks a limit (called before it is kept)."""
        if self.INPUT_TYPE == 'sensor_msgs/msg/Image':
            check_image(msg, int(self.max_image_width), int(self.max_image_height),
                        int(self.max_image_bytes))

    def input_stamp(self, msg: Any) -> tuple[int, bool]:
        """(stamp in ns, whether the input carried one); outputs carry this stamp."""
        stamp = messages.ns_from_time(msg.header.stamp)
        return stamp, stamp > 0

    def load_engine_file(self, architecture: str):
        """(engine, path): the `engine` parameter's file through the engine registry, checked
        to be `architecture` (and `expect_precision` when set); ParameterError otherwise."""
        from qail_ros.engines import EngineError, load_engine
        from qail_ros.share import resolve_share_path
        path = resolve_share_path(self.engine_file)
        expect = {'architecture': architecture}
        if self.expect_precision:
            expect['precision'] = self.expect_precision
        try:
            return load_engine(path, threads=int(self.threads), expect=expect), path
        except EngineError as exc:
            raise ParameterError(f"node '{self.get_name()}': engine: {exc}") from None

    def count_instruction_tokens(self, text: str) -> int | None:
        """Tokens of an instruction for `max_instruction_tokens` (None: cannot tell yet)."""
        return None

    # -- lifecycle -----------------------------------------------------------------------------
    def on_configure(self) -> None:
        """Load the engine; meanwhile a thread keeps the fail-safe going (the watchdog
        timers run only once the node spins)."""
        self._loading = True
        done = threading.Event()
        thread = threading.Thread(target=self._while_loading, args=(done,),
                                  name=f'{self.NODE_NAME}-loading', daemon=True)
        thread.start()
        try:
            self.load()
        finally:
            done.set()
            thread.join(2.0)
            self._loading = False

    def on_activate(self) -> None:
        self.timing_log.reset()
        if self.LATEST_FRAME:
            self.worker.start()
        self._timers_running = [
            self.create_timer(self._watchdog_period_s(), self.watchdog_callback),
            self.create_timer(float(self.diagnostics_period_s), self.diagnostics_callback)]

    def on_deactivate(self) -> None:
        for timer in self._timers_running:
            timer.cancel()
        self._timers_running = []
        self.worker.stop()
        self.publish_safe('shutdown')
        self.problems.flush(force=True)
        rejected = sum(self.rejected.values())
        self.get_logger().info(
            f'{self.inferences} {self.OUTPUTS} from {self.frames_received} {self.INPUTS} '
            f'({self.frames_dropped} dropped, {rejected} rejected, {self.inference_errors} '
            f'errors, {self.failsafe_activations} fail-safe activations); safe command '
            'published at shutdown')

    def on_cleanup(self) -> None:
        self.unload()

    # -- counts ------------------------------------------------------------------------------
    @property
    def frames_received(self) -> int:
        """Inputs that reached this node (delivered, rejected on arrival, or dropped by the
        subscription queue)."""
        delivered = self.worker.delivered if self.LATEST_FRAME else self._inline_received
        return delivered + self.rejected_in_callback + queue_drops(self.input_sub)

    @property
    def frames_dropped(self) -> int:
        """Inputs that never reached the policy: replaced here, or dropped by the queue
        (e.g. while on_configure was loading the model)."""
        return self.worker.replaced + queue_drops(self.input_sub)

    _inline_received = 0

    # -- input -------------------------------------------------------------------------------
    def input_callback(self, msg: Any) -> None:
        """Check the input at once; keep a valid one for the worker (latest frame) or infer
        now (inline)."""
        try:
            self.check_input(msg)
        except InputRejected as exc:
            self.rejected_in_callback += 1
            self.reject(exc.reason, str(exc))
            return
        self._last_valid_ns = self.now_ns()
        self._had_input = True
        if self.LATEST_FRAME:
            self.worker.offer(msg)
        elif self.loaded:    # inline: a state that comes while loading is not answered
            self._inline_received += 1
            self._process(msg)

    def step(self, msg: Any) -> Any:
        """Run the policy on one input and publish every output; returns the action (None
        when the input was rejected or inference failed: the safe command went out)."""
        return self._process(msg)

    def _process(self, msg: Any) -> Any:
        if not self.loaded:
            raise RuntimeError(f'{self.NODE_NAME} is not configured (on_configure loads the '
                               'engine)')
        start_s = time.time()
        t0 = time.perf_counter()
        try:
            inputs = self.to_inputs(msg)
        except (InputRejected, ImageEncodingError) as exc:
            self.reject(getattr(exc, 'reason', 'encoding'), str(exc))
            return None
        except Exception as exc:  # noqa: BLE001 - a bad input must not stop the policy
            self._inference_failed(exc)
            return None
        t1 = time.perf_counter()
        try:
            result = self.run(inputs)
            t2 = time.perf_counter()
            out = self.to_outputs(msg, result)
        except Exception as exc:  # noqa: BLE001 - one failure must not stop the policy
            self._inference_failed(exc)
            return None
        stamp_ns, stamped = self.input_stamp(msg)
        t3 = time.perf_counter()
        age_ms = (self.now_ns() - stamp_ns) / 1e6 if stamped else float('nan')
        if out.run_split_ms is None:
            pre, inf = (t1 - t0) * 1e3, (t2 - t1) * 1e3
        else:
            pre, inf = (t1 - t0) * 1e3 + out.run_split_ms[0], out.run_split_ms[1]
        timing = policy_io.InferenceTiming(
            stamp_ns=stamp_ns, start_s=start_s, end_s=start_s + (t3 - t0), preprocess_ms=pre,
            inference_ms=inf, postprocess_ms=(t3 - t0) * 1e3 - pre - inf, age_ms=age_ms,
            dropped_frames=self.frames_dropped)
        with self._lock:   # a safe command and an action never interleave
            for pub, message in out.messages:
                pub.publish(message)
            ended = self.failsafe
            self.failsafe = None
            self.inferences += 1
            self._diag_outputs += 1
            self.last_action = out.value
        self.raw_pub.publish(policy_io.raw_outputs_to_msg(stamp_ns, out.raw, out.raw_name))
        self.timing_pub.publish(policy_io.timing_to_msg(timing))
        if ended:
            self.get_logger().info(f'normal {self.OUTPUTS} again (the fail-safe was active: '
                                   f'{ended})')
        line = self.timing_log.add(timing)
        if line:
            self.get_logger().info(f'{out.log} | {line} | {self.INPUTS} '
                                   f'{self.frames_received}, dropped {self.frames_dropped}')
        return out.value

    def reject(self, reason: str, detail: str) -> None:
        """An invalid input: count it, log (rate-limited) and go to the fail-safe."""
        with self._lock:
            self.rejected[reason] += 1
            self._window['rejected'] += 1
        self.problems.report(f'rejected {self.INPUTS}', reason, detail)
        self.trip('invalid_input', f'{reason}: {detail}')

    def _inference_failed(self, exc: Exception) -> None:
        detail = shorten(f'{type(exc).__name__}: {exc}', 200)
        with self._lock:
            self.inference_errors += 1
            self._window['errors'] += 1
        self.problems.report('inference errors', type(exc).__name__, detail)
        self.trip('inference_error', detail)

    # -- instruction -------------------------------------------------------------------------
    def instruction_problem(self, text: str, tokens: bool = True) -> str | None:
        """Why an instruction is refused (the limit it breaks), or None. Bytes first: a huge
        text is never encoded or tokenised."""
        limit = int(self.max_instruction_bytes)
        if len(text) > limit or len(text.encode('utf-8')) > limit:
            return (f'an instruction of {len(text)} characters is over '
                    f'max_instruction_bytes ({limit} UTF-8 bytes)')
        if tokens:
            n = self.count_instruction_tokens(text)
            token_limit = int(self.max_instruction_tokens)
            if n is not None and n > token_limit:
                return (f'an instruction of {n} tokens is over max_instruction_tokens '
                        f'({token_limit})')
        return None

    def instruction_callback(self, msg: Any) -> None:
        """A new instruction, checked before it is tokenised; a refused one leaves the
        previous instruction in force."""
        text = msg.data
        problem = self.instruction_problem(text)
        if problem:
            with self._lock:
                self.instructions_rejected += 1
                self._window['instructions'] += 1
                self.last_error = f'instruction refused: {problem}'
            self.problems.report('refused instructions', 'limit',
                                 f'{problem}; still using {shorten(self.instruction)!r}')
            return
        if text != self.instruction:
            self.get_logger().info(f'new instruction: {shorten(text, 200)!r}')
        try:
            self.set_parameter('instruction', text)
        except ParameterError as exc:
            self.problems.report('refused instructions', 'parameter', str(exc))

    # -- fail-safe ---------------------------------------------------------------------------
    def _watchdog_period_s(self) -> float:
        return max(float(self.input_timeout_s) / 4.0, 0.005)

    def trip(self, kind: str, detail: str) -> None:
        """Enter (or stay in) the fail-safe and publish the safe command, at most once per
        watchdog period (the watchdog repeats it while the fail-safe lasts)."""
        now = self.now_ns()
        with self._lock:
            first = self.failsafe is None
            self.failsafe, self.failsafe_detail = kind, detail
            self.last_error = f'{kind}: {detail}'
            self._window['failsafe'] += 1
            if first:
                self.failsafe_activations += 1
                self.failsafe_started_ns = now
                self.last_failsafe_kind = kind
            due = first or now - self._last_safe_ns >= self._watchdog_period_s() * 1e9 * 0.9
        if first:
            self.problems.report('fail-safe', kind, f'{shorten(detail, 200)}; publishing the '
                                 f'{self.SAFE_COMMAND} until valid input returns')
        if due:
            self.publish_safe(kind)

    def publish_safe(self, why: str = '') -> bool:
        """Publish the safe command on the actuator topics; False when it cannot be formed
        yet (e.g. the action size is known only once the engine is loaded)."""
        try:
            outputs = self.safe_outputs()
        except Exception as exc:  # noqa: BLE001 - the fail-safe must not raise
            self.get_logger().error(f'cannot form the safe command: {exc}')
            return False
        if not outputs:
            return False
        with self._lock:
            for pub, message in outputs:
                pub.publish(message)
            self.safe_commands += 1
            self._last_safe_ns = self.now_ns()
        return True

    def watchdog_callback(self) -> None:
        """No valid input for input_timeout_s: fail-safe; while it lasts, repeat the safe
        command every watchdog period."""
        now = self.now_ns()
        age_s = (now - self._last_valid_ns) / 1e9
        timeout = float(self.input_timeout_s)
        if age_s >= timeout:
            what = 'no valid input' if self._had_input else 'no input yet'
            self.trip('input_timeout', f'{what} on {self.input_sub.topic} for {age_s:.2f} s '
                                       f'(input_timeout_s {timeout:g})')
        elif self.failsafe is not None and \
                now - self._last_safe_ns >= self._watchdog_period_s() * 1e9 * 0.9:
            self.publish_safe(self.failsafe)

    def _while_loading(self, done: threading.Event) -> None:
        """While load() runs: the watchdog and diagnostics (no timer runs yet)."""
        next_diag = 0.0
        while not done.wait(self._watchdog_period_s()):
            age_s = (self.now_ns() - self._last_valid_ns) / 1e9
            if age_s >= float(self.input_timeout_s):
                self.trip('loading', f'the engine is still loading ({age_s:.1f} s)')
            if time.monotonic() >= next_diag:
                next_diag = time.monotonic() + float(self.diagnostics_period_s)
                self.diagnostics_callback()

    # -- diagnostics -------------------------------------------------------------------------
    def diagnostics_status(self) -> tuple[int, str, dict[str, Any]]:
        """(level, message, values) of this node now; resets the period's window."""
        with self._lock:
            window, self._window = self._window, collections.Counter()
            outputs, self._diag_outputs = self._diag_outputs, 0
            failsafe, detail = self.failsafe, self.failsafe_detail
        age_s = (self.now_ns() - self._last_valid_ns) / 1e9
        dropped = self.frames_dropped
        new_drops = dropped - getattr(self, '_diag_dropped', 0)
        self._diag_dropped = dropped
        router, router_losses = self.router_state()
        new_losses = router_losses - getattr(self, '_diag_router_losses', 0)
        self._diag_router_losses = router_losses
        if self._loading:
            level, text = WARN, 'loading the engine; safe command on the actuator topics'
        elif failsafe == 'input_timeout' and not self._had_input:
            level, text = STALE, f'no input yet on {self.input_sub.topic}; safe command'
        elif failsafe is not None or window['failsafe']:
            level = ERROR
            text = (f'fail-safe ({failsafe}): {shorten(detail, 120)}' if failsafe
                    else f'fail-safe was active ({self.last_error[:120]}); normal again')
        elif router == 'lost':
            level, text = WARN, ('lost the Zenoh router: processes not already linked to '
                                 'this one cannot reach its topics until it is back')
        elif (window['rejected'] or window['instructions'] or window['errors'] or new_drops
              or new_losses):
            level = WARN
            parts = [f'{n} {what}' for n, what in (
                (window['rejected'], f'{self.INPUTS} rejected'),
                (window['instructions'], 'instructions refused'),
                (window['errors'], 'inference errors'), (new_drops, f'{self.INPUTS} dropped'),
                (new_losses, 'Zenoh router losses (back now)')) if n]
            text = ', '.join(parts) + f' in the last {float(self.diagnostics_period_s):g} s'
        else:
            level, text = OK, f'{outputs} {self.OUTPUTS} in the last ' \
                              f'{float(self.diagnostics_period_s):g} s'
        values = {
            'state': ('loading' if self._loading else 'fail-safe' if failsafe else 'running'),
            'failsafe': failsafe or '',
            'input_topic': self.input_sub.topic,
            'input_age_s': f'{age_s:.3f}' if self._had_input else 'none',
            'inputs_received': self.frames_received,
            'inputs_dropped': dropped,
            'inputs_rejected': sum(self.rejected.values()),
            **{f'rejected_{k}': n for k, n in sorted(self.rejected.items())},
            'instructions_rejected': self.instructions_rejected,
            'inference_errors': self.inference_errors,
            'failsafe_activations': self.failsafe_activations,
            'last_failsafe_kind': self.last_failsafe_kind,
            'last_failsafe_start_ns': self.failsafe_started_ns,
            'safe_commands': self.safe_commands,
            'outputs': self.inferences,
            'last_error': shorten(self.last_error, 200),
            'router': router,
            'router_losses': router_losses,
        }
        return level, text, values

    def router_state(self) -> tuple[str, int]:
        """(state, losses) of the Zenoh router of this process's transport: 'connected',
        'lost' (it went away and is not back), 'none' (none found at start) or 'n/a' (no
        Zenoh transport: rclpy, in-process only); losses counts the times it went away."""
        transport = getattr(self.runtime, 'transport', None)
        if transport is None or not hasattr(transport, 'router_losses'):
            return 'n/a', 0
        losses = int(transport.router_losses)
        if transport.router_connected:
            return 'connected', losses
        return ('lost' if losses else 'none'), losses

    def diagnostics_callback(self) -> None:
        self.problems.flush()
        level, text, values = self.diagnostics_status()
        kv = [messages.new('diagnostic_msgs/msg/KeyValue', key=k, value=str(v))
              for k, v in values.items()]
        status = messages.new('diagnostic_msgs/msg/DiagnosticStatus', level=level,
                              message=text, hardware_id=self._hardware_id, values=kv)
        status.name = f'{self.get_fully_qualified_name().lstrip("/")}: policy'
        self.diag_pub.publish(messages.new(
            'diagnostic_msgs/msg/DiagnosticArray',
            header=messages.new('std_msgs/msg/Header', stamp=self.now(), frame_id=''),
            status=[status]))


def zero_stamp_header(frame_id: str = ''):
    """The header of a safe command: stamp 0 (it answers no input)."""
    return messages.new('std_msgs/msg/Header', stamp=messages.time_from_ns(0),
                        frame_id=frame_id)


def twist_message(linear, angular, stamp, frame_id: str):
    """geometry_msgs/TwistStamped of three linear and three angular values."""
    vec = 'geometry_msgs/msg/Vector3'
    return messages.new(
        'geometry_msgs/msg/TwistStamped',
        header=messages.new('std_msgs/msg/Header', stamp=stamp, frame_id=frame_id),
        twist=messages.new('geometry_msgs/msg/Twist',
                           linear=messages.new(vec, x=linear[0], y=linear[1], z=linear[2]),
                           angular=messages.new(vec, x=angular[0], y=angular[1],
                                                z=angular[2])))


class ArmPolicyNode(PolicyNode):
    """A camera (+ instruction) policy of a 7-DoF end-effector action: the `action`,
    `cmd_twist` and `gripper` topics, a torch policy in `self.policy`, and the safe command
    (zero twist; zero deltas with the gripper held or set by `safe_gripper`). A node sets
    `SAFE_GRIPPER` (open / close -> the action's gripper value) and `gripper_value(a6)` (the
    `gripper` topic's value of an action's last entry)."""

    INSTRUCTION = True
    SAFE_COMMAND = 'zero cmd_twist, gripper held'
    SAFE_GRIPPER = {'open': 1.0, 'close': 0.0}
    LABELS = ('dx', 'dy', 'dz', 'droll', 'dpitch', 'dyaw', 'gripper')

    def __init__(self, **kwargs):
        self.policy = None
        super().__init__(**kwargs)

    @staticmethod
    def safe_gripper_spec() -> ParameterSpec:
        return ParameterSpec('safe_gripper', 'hold', 'gripper of the safe command: hold (the '
                             'last commanded value; none before the first action), open or '
                             'close', choices=('hold', 'open', 'close'))

    def create_outputs(self) -> None:
        self.action_pub = self.create_publisher('std_msgs/msg/Float32MultiArray', 'action', 10)
        self.twist_pub = self.create_publisher('geometry_msgs/msg/TwistStamped', 'cmd_twist', 10)
        self.gripper_pub = self.create_publisher('std_msgs/msg/Float32', 'gripper', 10)

    @property
    def loaded(self) -> bool:
        return self.policy is not None

    def unload(self) -> None:
        self.engine = self.policy = None

    def to_inputs(self, msg):
        from qail_ros.image import to_numpy
        return to_numpy(msg, desired='rgb8')

    def gripper_value(self, a6: float) -> float:
        raise NotImplementedError

    def arm_messages(self, action, linear, angular, stamp) -> list[tuple[Any, Any]]:
        """(publisher, message) of the action, its twist and its gripper value."""
        labels = self.LABELS if len(action) == len(self.LABELS) else \
            tuple(f'a{i}' for i in range(len(action)))
        return [(self.action_pub, policy_io.labelled_values(labels, action)),
                (self.twist_pub, twist_message(linear, angular, stamp, self.frame_id)),
                (self.gripper_pub, messages.new('std_msgs/msg/Float32',
                                                data=self.gripper_value(float(action[-1]))))]

    def safe_outputs(self) -> list[tuple[Any, Any]]:
        zero = [0.0, 0.0, 0.0]
        gripper = self.SAFE_GRIPPER.get(self.safe_gripper)
        if gripper is None and self.last_action is not None:
            gripper = float(self.last_action[-1])
        if gripper is None:   # nothing commanded yet: stop the arm, leave the gripper
            return [(self.twist_pub, twist_message(zero, zero, zero_stamp_header().stamp,
                                                   self.frame_id))]
        action = np.zeros(len(self.LABELS), np.float32)
        action[-1] = gripper
        return self.arm_messages(action, zero, zero, zero_stamp_header().stamp)
