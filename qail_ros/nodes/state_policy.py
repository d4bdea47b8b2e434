"""state_policy: a state-vector policy engine (FP or quantized MLP) -> actions, one per state.

The policy node of the physics pipeline (`physics_bridge` -> state_policy -> action). It runs an
engine written by `qail-ros export` (architecture 'mlp': the FP MLPPolicy on the torch back
end, or a QAIL-trained W4A4 student on the int8 kernels), so recording with the FP policy and
driving with the quantized one is the same node with another `engine`.

Subscribes
  state          std_msgs/Float64MultiArray in the qail_ros.policy_io stamped-array contract
                 (data_offset 2, stamp first), or a plain Float64MultiArray (no stamp: the
                 outputs then carry this node's receive time). Inference runs in the callback:
                 an MLP takes well under a millisecond, so no state is ever skipped.

Publishes (one message each per state)
  action          std_msgs/Float64MultiArray, stamped like the state it answers (policy_io
                  contract, dim[0].label 'action'): act_dim values in [-1, 1]
  ~/raw_outputs   the same values (the MLP's tanh output is what QBC distils), policy_io
  ~/policy_timing policy_io timing (latency = unpack + inference + publish preparation)

Parameters: engine (engine file or its manifest; relative: cwd, then the share directory),
threads, expect_precision ('' = any, e.g. w4a4 to refuse another engine), state_topic,
action_topic, log_period_s.
"""
from __future__ import annotations

import sys
import time

import numpy as np

from qail_ros import policy_io
from qail_ros.errors import ParameterError
from qail_ros.nodes.latest_frame import TimingLog
from qail_ros.runtime import Node, run_node

__all__ = ['StatePolicy', 'main']


class StatePolicy(Node):
    """Runs an 'mlp' engine on every state message; see the module docstring."""

    def __init__(self, **kwargs):
        super().__init__('state_policy', **kwargs)
        p = self.declare_parameter
        self.engine_file = p('engine', '', 'engine file written by qail-ros export').value
        self.threads = p('threads', 1, 'CPU threads of the engine').value
        self.expect_precision = p('expect_precision', '', "refuse engines of another "
                                  "precision ('' = any)").value
        state_topic = p('state_topic', 'state').value
        action_topic = p('action_topic', 'action').value
        self.log_period_s = p('log_period_s', 5.0, 'seconds between log lines; 0 = every '
                              'action').value
        if not self.engine_file:
            raise ParameterError(f"node '{self.get_name()}': parameter 'engine' is empty: "
                                 'pass engine:=FILE (an engine written by qail-ros export)')
        if self.threads < 1 or self.log_period_s < 0:
            raise ParameterError(f"node '{self.get_name()}': threads must be >= 1 and "
                                 'log_period_s >= 0')
        self.engine = None
        self.inferences = 0
        self.last_action: np.ndarray | None = None
        self.timing_log = TimingLog(float(self.log_period_s))
        self.action_pub = self.create_publisher('std_msgs/msg/Float64MultiArray', action_topic,
                                                10)
        self.raw_pub = self.create_publisher('std_msgs/msg/Float64MultiArray', '~/raw_outputs',
                                             10)
        self.timing_pub = self.create_publisher('std_msgs/msg/Float64MultiArray',
                                                '~/policy_timing', 10)
        self.state_sub = self.create_subscription('std_msgs/msg/Float64MultiArray', state_topic,
                                                  self.state_callback, 10)

    def on_configure(self) -> None:
        from qail_ros.engines import EngineError, load_engine
        from qail_ros.nodes.cilrs_policy import resolve_engine_path
        path = resolve_engine_path(self.engine_file)
        expect = {'architecture': 'mlp'}
        if self.expect_precision:
            expect['precision'] = self.expect_precision
        try:
            engine = load_engine(path, threads=int(self.threads), expect=expect)
        except EngineError as exc:
            raise ParameterError(f"node '{self.get_name()}': engine: {exc}") from None
        self.obs_dim = int(engine.manifest.inputs['state']['shape'][-1])
        self.act_dim = int(engine.manifest.outputs['action']['shape'][-1])
        warm = engine.warmup(3)
        self.engine = engine
        task = engine.manifest.details.get('task') or '?'
        self.get_logger().info(
            f'MLP policy for {task} (state {self.obs_dim} -> action {self.act_dim}): '
            f'{engine.precision} on {engine.backend} ({path.name}), loaded in '
            f'{engine.load_s:.2f} s, warm-up {warm * 1e3:.1f} ms')

    def on_cleanup(self) -> None:
        self.engine = None

    def state_callback(self, msg) -> None:
        if self.engine is None:
            return
        start_s = time.time()
        t0 = time.perf_counter()
        offset = int(msg.layout.data_offset)
        stamped = offset == 2
        stamp_ns = policy_io.raw_outputs_from_msg(msg)[0] if stamped else self.now_ns()
        state = np.asarray(msg.data[offset:], dtype=np.float32)
        if state.shape != (self.obs_dim,):
            self.get_logger().error(f'state with {state.size} values, the engine takes '
                                    f'{self.obs_dim}: is the engine for this task?')
            return
        t1 = time.perf_counter()
        action = self.engine.infer({'state': state[None]})['action'][0].astype(np.float64)
        t2 = time.perf_counter()
        action_msg = policy_io.raw_outputs_to_msg(stamp_ns, action, 'action')
        t3 = time.perf_counter()
        self.action_pub.publish(action_msg)
        self.raw_pub.publish(action_msg)     # the MLP's raw output is its action
        age_ms = (self.now_ns() - stamp_ns) / 1e6 if stamped else float('nan')
        timing = policy_io.InferenceTiming(
            stamp_ns=stamp_ns, start_s=start_s, end_s=start_s + (t3 - t0),
            preprocess_ms=(t1 - t0) * 1e3, inference_ms=(t2 - t1) * 1e3,
            postprocess_ms=(t3 - t2) * 1e3, age_ms=age_ms)
        self.timing_pub.publish(policy_io.timing_to_msg(timing))
        self.inferences += 1
        self.last_action = action
        line = self.timing_log.add(timing)
        if line:
            values = ' '.join(f'{v:+.2f}' for v in action[:6])
            self.get_logger().info(f'action [{values}{" ..." if action.size > 6 else ""}] | '
                                   f'{line} | {self.inferences} states')


def main(args=None) -> int:
    return run_node(StatePolicy, args)


if __name__ == '__main__':
    sys.exit(main())
