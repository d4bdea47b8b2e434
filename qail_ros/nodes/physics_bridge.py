"""physics_bridge: a physics task (qail_ros.physics) behind robot-style topics.

Steps any physics task (a DeepMind Control `domain-task`, `gym:ENV_ID` or your `module:factory`;
docs/physics.md) and talks like a robot driver to a state policy, so a policy node
drives it closed-loop, fp_recorder records it, and the result is the same bag a robot makes:

Publishes (every simulation step, state before the image, both with the same header stamp)
  state       std_msgs/Float64MultiArray in the qail_ros.policy_io stamped-array contract
              (layout.data_offset = 2, the stamp in the two leading values; dim[0].label
              'state'): the task's flat observation vector (`qail_ros.physics.make_env`)
  image_raw   sensor_msgs/Image rgb8 (`image_width` x `image_height`), frame_id 'camera': the
              view of the task (`camera`: schematic, mujoco, state or auto; schematic
              falls back to MuJoCo's renderer or a state plot for a body it does not
              know; see qail_ros.physics.render)
  ~/episode   std_msgs/String, JSON of each finished episode (index, seed, return, steps,
              success) and the running mean return

Subscribes
  action      std_msgs/Float64MultiArray in the same stamped-array contract (what state_policy
              publishes), or a plain Float64MultiArray: act_dim values in [-1, 1], applied from
              the next step on.

Stepping: a timer at `rate_hz`. With `synchronous` (like CARLA's synchronous mode) a step waits
for the action answering the last state (stamp equal to the state's or newer), at most
`control_timeout_s`, then goes on with the last action. Episodes last `max_steps` steps (0: the
task's own time limit, e.g. 1000) or until the env ends them, and follow each other with seeds
seed, seed+1, ...; `episodes` > 0 stops after that many and, with `shutdown_when_done`, ends the
process's spin (every node is cleaned up, so a recorder in the launch closes its bags).

Recording: with `recorder_control_topic` (e.g. /fp_recorder/control) the bridge tells the
recorder where episodes end: 'episode_end success' when the return reached `success_return`
(> 0), 'episode_end failure' below it, plain 'episode_end' when no threshold is set.

Parameters: task, seed, episodes, max_steps, rate_hz, synchronous, control_timeout_s, camera,
image_width, image_height, view_m, state_topic, image_topic, action_topic,
recorder_control_topic, success_return, shutdown_when_done, wait_for_subscribers (before the
first step: subscribers of `state` to wait for, re-publishing the first state every second).
"""
from __future__ import annotations

import json
import sys
import time

import numpy as np

from qail_ros import messages, policy_io
from qail_ros.errors import ParameterError
from qail_ros.nodes.sim_stepping import SynchronousStepping
from qail_ros.runtime import Node, run_node

__all__ = ['PhysicsBridge', 'main']

FRAME_ID = 'camera'
REPUBLISH_MATCHED_S = 5.0


class PhysicsBridge(SynchronousStepping, Node):
    """Steps a physics task and bridges it to state / image / action topics (module doc)."""

    def __init__(self, **kwargs):
        super().__init__('physics_bridge', **kwargs)
        p = self.declare_parameter
        self.task = p('task', 'cartpole-balance', 'physics task: domain-task (walker-stand), '
                      'gym:ENV_ID or module:factory').value
        self.seed = p('seed', 0, 'seed of the first episode; then +1 each').value
        self.max_steps = p('max_steps', 0, "steps per episode; 0 = the task's own limit").value
        self.declare_stepping_parameters(50.0, 'simulation steps per wall-clock second at most',
                                         'action', 'state')
        self.camera = p('camera', 'schematic', 'schematic | mujoco | state | auto').value
        self.image_width = p('image_width', 96, 'camera width, pixels').value
        self.image_height = p('image_height', 72, 'camera height, pixels').value
        self.view_m = p('view_m', 4.0, 'metres across the schematic camera').value
        state_topic = p('state_topic', 'state').value
        image_topic = p('image_topic', 'image_raw').value
        action_topic = p('action_topic', 'action').value
        control_topic = p('recorder_control_topic', '', "the recorder's ~/control topic "
                          "('' = do not mark episodes)").value
        self.success_return = p('success_return', 0.0, 'episode return that counts as success '
                                '(0 = outcome not judged)').value
        self.wait_for_subscribers = p('wait_for_subscribers', 1, 'subscribers of the state '
                                      'topic to wait for before the first step').value
        self._validate()
        self.env = None
        self.cam = None
        self.results: list[dict] = []
        self.action: np.ndarray | None = None
        self.actions_received = 0
        self.actions_rejected = 0
        self.steps = 0
        self._episode = 0
        self._episode_return = 0.0
        self._episode_steps = 0
        self._started = False
        self._subscribers_at_publish = 0
        self._waiting_since = 0.0
        self.state_pub = self.create_publisher('std_msgs/msg/Float64MultiArray', state_topic, 10)
        self.image_pub = self.create_publisher('sensor_msgs/msg/Image', image_topic, 10)
        self.episode_pub = self.create_publisher('std_msgs/msg/String', '~/episode', 10)
        self.control_pub = (self.create_publisher('std_msgs/msg/String', control_topic, 10)
                            if control_topic else None)
        self.action_sub = self.create_subscription('std_msgs/msg/Float64MultiArray', action_topic,
                                                   self.action_callback, 10)

    def _validate(self) -> None:
        from qail_ros.physics.render import CAMERAS
        from qail_ros.physics.tasks import UnknownTaskError, resolve_task
        problems = []
        try:
            resolve_task(self.task)
        except UnknownTaskError as exc:
            problems.append(str(exc))
        if self.camera not in CAMERAS:
            problems.append(f"camera must be one of {', '.join(CAMERAS)}, not '{self.camera}'")
        if self.image_width < 16 or self.image_height < 16:
            problems.append(f'image must be at least 16x16, not '
                            f'{self.image_width}x{self.image_height}')
        if self.rate_hz <= 0 or self.control_timeout_s <= 0 or self.view_m <= 0:
            problems.append('rate_hz, control_timeout_s and view_m must be > 0')
        if self.episodes < 0 or self.max_steps < 0 or self.wait_for_subscribers < 0:
            problems.append('episodes, max_steps and wait_for_subscribers must be >= 0')
        if problems:
            raise ParameterError(f"node '{self.get_name()}': " + '; '.join(problems))

    # -- lifecycle ------------------------------------------------------------------------------
    def on_configure(self) -> None:
        from qail_ros.physics.render import make_camera
        from qail_ros.physics.tasks import make_env
        self.env = make_env(self.task, int(self.seed))
        self.limit = int(self.max_steps) or self.env.max_steps
        self.cam = make_camera(self.env, self.camera, int(self.image_width),
                               int(self.image_height), float(self.view_m))
        self._obs = self.env.reset()
        self.get_logger().info(
            f'{self.task} (state {self.env.obs_dim}, action {self.env.act_dim}), seed '
            f'{self.seed}, {self.limit} steps per episode, {self.cam.kind} '
            f'{self.stepping_text()}')

    def on_cleanup(self) -> None:
        self.env = None
        self.cam = None

    # -- callbacks ------------------------------------------------------------------------------
    def action_callback(self, msg) -> None:
        """Keep the newest action; note whether it answers the last state."""
        offset = int(msg.layout.data_offset)
        values = np.asarray(msg.data[offset:], dtype=np.float64)
        if self.env is not None and values.shape != (self.env.act_dim,):
            self.actions_rejected += 1
            if self.actions_rejected in (1, 10, 100) or self.actions_rejected % 1000 == 0:
                self.get_logger().warning(
                    f'action with {values.size} values ignored ({self.actions_rejected} so '
                    f'far): {self.task} takes {self.env.act_dim}; is the policy for this task?')
            return
        self.action = values
        self.actions_received += 1
        stamped = offset == 2 and msg.layout.dim and msg.layout.dim[0].size == values.size
        self.answer_received(policy_io.raw_outputs_from_msg(msg)[0] if stamped else None)

    def timer_callback(self) -> None:
        self.shutdown_when_due()
        if self.env is None or self.done:
            return
        if not self._started and not self._ready_to_start():
            return
        if self.waiting_for_answer():
            return
        self.step()

    def _ready_to_start(self) -> bool:
        """Before the first step: wait for `wait_for_subscribers` subscribers of the state
        topic and (synchronous) for the first action. Late subscribers miss what was published
        before they matched, so the initial state is re-published with a fresh stamp: every
        second while subscribers are missing, once when the last one matches (if the last copy went
out before it did), then every
        REPUBLISH_MATCHED_S while no action comes (a publish right after matching can be lost
        while discovery settles). A policy that was slow to start may still answer an earlier
        copy: that is a real state-action pair and a recorder keeps it (one extra sample at
        the start of the first episode)."""
        now = time.monotonic()
        subscribers = self.state_pub.get_subscription_count()
        matched = subscribers >= self.wait_for_subscribers
        if matched and (self.answered or not self.synchronous):
            self._started = True
            return True
        if not self._waiting_since:
            self._waiting_since = now
        if matched and self._subscribers_at_publish < self.wait_for_subscribers:
            self.publish_observation()           # the last copy missed a subscriber
            return False
        if self.seconds_since_observation() >= (REPUBLISH_MATCHED_S if matched else 1.0):
            waited = now - self._waiting_since
            if waited >= 5.0:
                what = (f'{subscribers}/{self.wait_for_subscribers} state subscribers'
                        if not matched else 'no action yet')
                self.get_logger().info(f'waiting to start ({what}, {waited:.0f} s): is the '
                                       f'policy running and reading {self.state_pub.topic}?')
            self.publish_observation()
        return False

    @property
    def done(self) -> bool:
        return bool(self.episodes) and self._episode >= self.episodes

    def step(self) -> None:
        """One simulation step with the newest action (zeros before the first), then publish."""
        from qail_ros.physics.tasks import make_env
        env = self.env
        action = self.action if self.action is not None else np.zeros(env.act_dim)
        self._obs, reward, done = env.step(action)
        self.steps += 1
        self._episode_steps += 1
        self._episode_return += reward
        if done or self._episode_steps >= self.limit:
            self._finish_episode()
            if self.done:
                self.episodes_done()
                return
            # dm_control fixes the initial-state seed at load time: a new env per episode
            self.env = self.cam.env = make_env(self.task, int(self.seed) + self._episode)
            self._obs = self.env.reset()
            self.action = None
        self.publish_observation()

    def _finish_episode(self) -> None:
        ret = float(self._episode_return)
        success = None if self.success_return <= 0 else ret >= self.success_return
        info = {'episode': self._episode, 'seed': int(self.seed) + self._episode,
                'return': ret, 'steps': self._episode_steps, 'success': success}
        self.results.append(info)
        self._episode += 1
        self._episode_return, self._episode_steps = 0.0, 0
        self.get_logger().info(f"episode {self._episode} (seed {info['seed']}): return "
                               f"{ret:.1f} in {info['steps']} steps")
        if self.control_pub is not None:
            outcome = '' if success is None else (' success' if success else ' failure')
            self.control_pub.publish(messages.new('std_msgs/msg/String',
                                                  data=f'episode_end{outcome}'))
        self.episode_pub.publish(messages.new('std_msgs/msg/String', data=json.dumps(
            {'episode': info, 'metrics': self.metrics()})))

    def metrics(self) -> dict:
        if not self.results:
            return {}
        rets = [r['return'] for r in self.results]
        return {'episodes': len(rets), 'return_mean': float(np.mean(rets)),
                'return_std': float(np.std(rets))}

    def publish_observation(self) -> None:
        """State, then the camera frame of the current simulation state, one stamp."""
        from qail_ros.image import from_numpy
        now_ns = self.now_ns()
        self._subscribers_at_publish = self.state_pub.get_subscription_count()
        self.state_pub.publish(policy_io.raw_outputs_to_msg(now_ns, self._obs, name='state'))
        self.observation_sent(now_ns)
        stamp = messages.time_from_ns(now_ns)
        self.image_pub.publish(from_numpy(self.cam.render(), 'rgb8', stamp=stamp,
                                          frame_id=FRAME_ID))


def main(args=None) -> int:
    return run_node(PhysicsBridge, args)


if __name__ == '__main__':
    sys.exit(main())
