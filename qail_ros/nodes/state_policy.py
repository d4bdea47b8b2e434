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

Fail-safe (qail_ros.nodes.policy_base): on a state of the wrong size, an inference error, no
state for `input_timeout_s` (default 1 s), while loading and at shutdown it publishes the safe
action (`safe_action`, default zeros) with stamp 0: it answers no state, so physics_bridge in
synchronous mode does not take it for the answer to its state, and a dataset never pairs it.
/diagnostics at 1 Hz.

Parameters: `StatePolicy.PARAMETERS` below (engine, threads, expect_precision and the topics are
read-only) and the common ones of PolicyNode (no max_rate_hz: every state is answered).
"""
from __future__ import annotations

import sys

import numpy as np

from qail_ros import policy_io
from qail_ros.errors import ParameterError
from qail_ros.nodes.policy_base import InputRejected, PolicyNode, PolicyOutputs
from qail_ros.runtime import run_node
from qail_ros.runtime.params import ParameterSpec

__all__ = ['StatePolicy', 'main']


class StatePolicy(PolicyNode):
    """Runs an 'mlp' engine on every state message; see the module docstring."""

    NODE_NAME = 'state_policy'
    INPUTS = 'states'
    INPUT_TYPE = 'std_msgs/msg/Float64MultiArray'
    LATEST_FRAME = False
    INPUT_TIMEOUT_S = 1.0
    LOG_PERIOD_S = 5.0
    SAFE_COMMAND = 'safe action (safe_action, zeros by default)'
    PARAMETERS = (
        ParameterSpec('engine', '', 'engine file written by qail-ros export', read_only=True,
                      attr='engine_file'),
        ParameterSpec('threads', 1, 'CPU threads of the engine', min=1, read_only=True),
        ParameterSpec('expect_precision', '', "refuse engines of another precision ('' = "
                      'any)', read_only=True),
        ParameterSpec('state_topic', 'state', read_only=True),
        ParameterSpec('action_topic', 'action', read_only=True),
        ParameterSpec('safe_action', [0.0], 'action of the safe command; [0.0] = zeros of '
                      "the engine's action size"),
    )

    def __init__(self, **kwargs):
        self.engine = None
        self.obs_dim = self.act_dim = 0
        super().__init__(**kwargs)

    def check_parameters(self) -> None:
        if not self.engine_file:
            raise ParameterError(f"node '{self.get_name()}': parameter 'engine' is empty: "
                                 'pass engine:=FILE (an engine written by qail-ros export)')

    def input_topic(self) -> str:
        return self.state_topic

    def create_outputs(self) -> None:
        self.action_pub = self.create_publisher('std_msgs/msg/Float64MultiArray',
                                                self.action_topic, 10)

    # -- engine ---------------------------------------------------------------------------------
    def load(self) -> None:
        engine, path = self.load_engine_file('mlp')
        self.obs_dim = int(engine.manifest.inputs['state']['shape'][-1])
        self.act_dim = int(engine.manifest.outputs['action']['shape'][-1])
        warm = engine.warmup(3)
        self.engine = engine
        task = engine.manifest.details.get('task') or '?'
        self.get_logger().info(
            f'MLP policy for {task} (state {self.obs_dim} -> action {self.act_dim}): '
            f'{engine.precision} on {engine.backend} ({path.name}), loaded in '
            f'{engine.load_s:.2f} s, warm-up {warm * 1e3:.1f} ms')

    # -- inference ------------------------------------------------------------------------------
    def check_input(self, msg) -> None:
        size = len(msg.data) - int(msg.layout.data_offset)
        if self.engine is not None and size != self.obs_dim:
            raise InputRejected('wrong_size', f'state with {size} values, the engine takes '
                                              f'{self.obs_dim}: is the engine for this task?')
        values = np.asarray(msg.data[int(msg.layout.data_offset):], dtype=np.float64)
        if not np.all(np.isfinite(values)):
            raise InputRejected('non_finite', 'state with NaN / inf values')

    def input_stamp(self, msg) -> tuple[int, bool]:
        if int(msg.layout.data_offset) == 2:
            return policy_io.raw_outputs_from_msg(msg)[0], True
        return self._receive_ns, False

    def state_callback(self, msg) -> None:
        """The subscription callback (kept under its old name)."""
        self.input_callback(msg)

    def to_inputs(self, msg):
        self._receive_ns = self.now_ns()
        offset = int(msg.layout.data_offset)
        return np.asarray(msg.data[offset:], dtype=np.float32)

    def run(self, state):
        return self.engine.infer({'state': state[None]})['action'][0].astype(np.float64)

    def to_outputs(self, msg, action) -> PolicyOutputs:
        stamp_ns, _ = self.input_stamp(msg)
        values = ' '.join(f'{v:+.2f}' for v in action[:6])
        return PolicyOutputs(
            messages=[(self.action_pub, policy_io.raw_outputs_to_msg(stamp_ns, action,
                                                                     'action'))],
            raw=action, raw_name='action', value=action,   # the MLP's raw output is its action
            log=f'action [{values}{" ..." if action.size > 6 else ""}]')

    def safe_outputs(self) -> list:
        if not self.act_dim:
            return []
        safe = np.asarray(self.safe_action, dtype=np.float64)
        if safe.size != self.act_dim:
            safe = np.zeros(self.act_dim) if not np.any(safe) else None
        if safe is None:
            raise ParameterError(f'safe_action has {len(self.safe_action)} values, the engine '
                                 f'acts with {self.act_dim}')
        return [(self.action_pub, policy_io.raw_outputs_to_msg(0, safe, 'action'))]


def main(args=None) -> int:
    return run_node(StatePolicy, args)


if __name__ == '__main__':
    sys.exit(main())
