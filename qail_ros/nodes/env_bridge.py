"""env_bridge: the driving simulator (qail_ros.driving) behind carla-ros-bridge's topics.

Steps a qail_ros.driving env (highway-env roads, CPU rendering) and talks like carla-ros-bridge
to an ego-vehicle controller, so the cilrs_policy node drives it closed-loop unchanged:

Publishes (every simulation step, speed and command before the image so that a policy reading
the newest speed with the frame gets the matching one)
  /carla/ego_vehicle/speedometer          std_msgs/Float32, m/s (`speed_topic`)
  /carla/ego_vehicle/navigation_command   std_msgs/Int8, CARLA RoadOption (`command_topic`)
  /carla/ego_vehicle/rgb_front/image      sensor_msgs/Image rgb8 (`camera_topic`), the env's
                 camera (`image_width` x `image_height`), frame_id 'ego_vehicle/rgb_front'
  ~/expert_control  carla_msgs/CarlaEgoVehicleControl: what the privileged IDM/MOBIL expert
                 would do now (labels for recording demonstrations), stamped like the frame
  ~/episode       std_msgs/String, JSON of each finished episode (success, collision,
                 route_completion, ...) and the running metrics

Subscribes
  /carla/ego_vehicle/vehicle_control_cmd  carla_msgs/CarlaEgoVehicleControl (`control_topic`):
                 throttle / steer / brake (hand_brake = full brake; reverse is not simulated)
                 applied from the next step on.

Stepping: a timer at `rate_hz`. With `synchronous` (CARLA's synchronous mode) a step waits for
the control that answers the last frame (header.stamp equal to the frame's or newer), at most
`control_timeout_s`, then goes on with the last control. With `autopilot` the expert drives and
control messages are ignored (recording demonstrations through the recorder). Episodes follow
each other with seeds seed, seed+1, ...; `episodes` > 0 stops stepping after that many and,
with `shutdown_when_done`, ends the process's spin (the episode metrics are logged; a launch
with on_exit=Shutdown then ends).

Parameters: town, density, seed, image_width, image_height, view_m, rate_hz, synchronous,
control_timeout_s, autopilot, episodes, shutdown_when_done, camera_topic, speed_topic,
command_topic, control_topic.
"""
from __future__ import annotations

import json
import sys

from qail_ros import messages
from qail_ros.errors import ParameterError
from qail_ros.nodes.sim_stepping import SynchronousStepping
from qail_ros.runtime import Node, run_node

__all__ = ['EnvBridge', 'main']

CONTROL_TYPE = 'carla_msgs/msg/CarlaEgoVehicleControl'
FRAME_ID = 'ego_vehicle/rgb_front'


class EnvBridge(SynchronousStepping, Node):
    """Steps a driving env and bridges it to carla-ros-bridge topics; see the module docstring."""

    def __init__(self, **kwargs):
        super().__init__('env_bridge', **kwargs)
        from qail_ros.msg_defs import register_carla_msgs
        register_carla_msgs()
        p = self.declare_parameter
        self.town = p('town', 'highway', "road layout: highway, merge or roundabout").value
        self.density = p('density', 'regular', 'traffic: empty, regular or dense').value
        self.seed = p('seed', 0, 'seed of the first episode (route); then +1 each').value
        self.image_width = p('image_width', 200, 'camera width, pixels').value
        self.image_height = p('image_height', 88, 'camera height, pixels').value
        self.view_m = p('view_m', 80.0, 'metres the camera covers across its width').value
        self.declare_stepping_parameters(10.0, 'simulation steps per wall-clock second (the '
                                         'simulated step is 0.1 s)', 'control', 'frame')
        self.autopilot = p('autopilot', False, 'the privileged expert drives').value
        camera_topic = p('camera_topic', '/carla/ego_vehicle/rgb_front/image').value
        speed_topic = p('speed_topic', '/carla/ego_vehicle/speedometer').value
        command_topic = p('command_topic', '/carla/ego_vehicle/navigation_command').value
        control_topic = p('control_topic', '/carla/ego_vehicle/vehicle_control_cmd').value
        self._validate()
        self.env = None
        self.results: list[dict] = []
        self.control = (0.0, 0.0, 0.0)
        self.controls_received = 0
        self.steps = 0
        self._episode = 0
        self._expert = (0.0, 0.0, 0.0)
        self.image_pub = self.create_publisher('sensor_msgs/msg/Image', camera_topic, 10)
        self.speed_pub = self.create_publisher('std_msgs/msg/Float32', speed_topic, 10)
        self.command_pub = self.create_publisher('std_msgs/msg/Int8', command_topic, 10)
        self.expert_pub = self.create_publisher(CONTROL_TYPE, '~/expert_control', 10)
        self.episode_pub = self.create_publisher('std_msgs/msg/String', '~/episode', 10)
        self.control_sub = self.create_subscription(CONTROL_TYPE, control_topic,
                                                    self.control_callback, 10)

    def _validate(self) -> None:
        from qail_ros.driving.env import DENSITIES, LAYOUTS
        problems = []
        if self.town not in LAYOUTS:
            problems.append(f"town must be one of {', '.join(LAYOUTS)}, not '{self.town}'")
        if self.density not in DENSITIES:
            problems.append(f"density must be one of {', '.join(DENSITIES)}, not "
                            f"'{self.density}'")
        if self.image_width < 16 or self.image_height < 16:
            problems.append(f'image must be at least 16x16, not '
                            f'{self.image_width}x{self.image_height}')
        if self.rate_hz <= 0:
            problems.append(f'rate_hz must be > 0, not {self.rate_hz}')
        if self.control_timeout_s <= 0 or self.view_m <= 0 or self.episodes < 0:
            problems.append('control_timeout_s and view_m must be > 0, episodes >= 0')
        if problems:
            raise ParameterError(f"node '{self.get_name()}': " + '; '.join(problems))

    # -- lifecycle ------------------------------------------------------------------------------
    def on_configure(self) -> None:
        from qail_ros.driving.env import DrivingError, make_env
        try:
            self.env = make_env(self.density, int(self.seed), self.town,
                                (int(self.image_width), int(self.image_height)),
                                view_m=float(self.view_m))
        except DrivingError as exc:
            raise ParameterError(f"node '{self.get_name()}': {exc}") from None
        self._obs = self.env.reset(int(self.seed))
        self.get_logger().info(
            f'{self.town} / {self.density} traffic, seed {self.seed}, {self.stepping_text()}'
            f"{', autopilot' if self.autopilot else ''}")

    def on_cleanup(self) -> None:
        if self.env is not None:
            self.env.close()
            self.env = None

    # -- callbacks ------------------------------------------------------------------------------
    def control_callback(self, msg) -> None:
        """Keep the newest control; note whether it answers the last frame."""
        brake = 1.0 if msg.hand_brake else float(msg.brake)
        self.control = (float(msg.throttle), float(msg.steer), brake)
        self.controls_received += 1
        self.answer_received(messages.ns_from_time(msg.header.stamp))

    def timer_callback(self) -> None:
        self.shutdown_when_due()
        if self.env is None or (self.episodes and self._episode >= self.episodes):
            return
        if not self.autopilot and self.waiting_for_answer():
            return
        self.step()

    def step(self) -> None:
        """One simulation step with the current control (or the expert's), then publish."""
        env = self.env
        control = self._expert if self.autopilot else self.control
        self._obs, done, info = env.step_control(*control)
        self.steps += 1
        if done:
            self._finish_episode(info)
            if self.episodes and self._episode >= self.episodes:
                self.episodes_done()
                return
            self._obs = env.reset(int(self.seed) + self._episode)
            self.control = (0.0, 0.0, 0.0)
        self.publish_observation()

    def _finish_episode(self, info: dict) -> None:
        from qail_ros.driving.closed_loop import episode_metrics
        self.results.append(info)
        self._episode += 1
        outcome = next((k for k in ('success', 'collision', 'off_road', 'off_route', 'timeout')
                        if info.get(k)), 'unknown')
        self.get_logger().info(
            f"episode {self._episode} (seed {info['seed']}): {outcome}, route "
            f"{100 * info['route_completion']:.0f}% in {info['steps']} steps")
        payload = {'episode': info, 'metrics': episode_metrics(self.results)}
        self.episode_pub.publish(messages.new('std_msgs/msg/String',
                                              data=json.dumps(payload, default=float)))

    def metrics(self) -> dict:
        from qail_ros.driving.closed_loop import episode_metrics
        return episode_metrics(self.results) if self.results else {}

    def publish_observation(self) -> None:
        """Speed, command, expert label and camera frame of the current state."""
        from qail_ros.driving.env import action_to_control
        from qail_ros.image import from_numpy
        obs = self._obs
        now_ns = self.now_ns()
        stamp = messages.time_from_ns(now_ns)
        header = messages.new('std_msgs/msg/Header', stamp=stamp, frame_id=FRAME_ID)
        self.speed_pub.publish(messages.new('std_msgs/msg/Float32', data=float(obs.speed)))
        self.command_pub.publish(messages.new('std_msgs/msg/Int8', data=int(obs.command)))
        expert = action_to_control(self.env.expert_action())
        self._expert = expert
        self.expert_pub.publish(messages.new(CONTROL_TYPE, header=header, throttle=expert[0],
                                             steer=expert[1], brake=expert[2]))
        self.observation_sent(now_ns)
        self.image_pub.publish(from_numpy(obs.image, 'rgb8', stamp=stamp, frame_id=FRAME_ID))


def main(args=None) -> int:
    return run_node(EnvBridge, args)


if __name__ == '__main__':
    sys.exit(main())
