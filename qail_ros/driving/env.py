"""The closed-loop driving environment: highway-env roads, CARLA-style control, camera and route.

CARLA needs a GPU server that cannot run here, so the benchmark drives in highway-env (PyPI,
pure Python + pygame, renders on CPU). `DrivingEnv` turns one of its road layouts into a task in
the shape of CARLA's end-to-end driving benchmarks (CILRS / NoCrash):

- control: CarlaEgoVehicleControl semantics, throttle in [0, 1], brake in [0, 1], steer in
  [-1, 1]; or the CILRS action (accel, steer) in [-1, 1]^2 with throttle = max(accel, 0) and
  brake = max(-accel, 0) (carla-roach's conversion). throttle 1 = +THROTTLE_ACC m/s^2, brake 1 =
  -BRAKE_DEC m/s^2, steer 1 = MAX_STEER rad of front-wheel angle (kinematic bicycle); braking
  stops the car, it never reverses (as CARLA without reverse gear).
- observation: an RGB camera image (highway-env's renderer, a top-down view that follows the ego
  car, world-aligned, ego at 30% from the left edge; `image_size` = (width, height), `view_m`
  metres across), the measured speed in m/s and a navigation command (CARLA RoadOption values,
  as the cilrs_policy node takes them).
- navigation command: LANEFOLLOW, CHANGELANELEFT / CHANGELANERIGHT while the route planner (the
  MOBIL lane-change model run on the ego car) wants another lane, LEFT / RIGHT / STRAIGHT on the
  approach to and inside a roundabout, from the turn between its entry and the route's exit.
- route: a fixed distance along the layout's route (`LAYOUTS[town]['route_m']`); success =
  route done without collision, without leaving the road or the route, within the time limit.
- traffic: `DENSITIES` empty / regular / dense (IDM/MOBIL cars with randomised behaviour), in the
  spirit of NoCrash's empty / regular / dense.
- layouts: 'highway' (4 lanes, the training town) and the unseen 'merge' (a ramp joining a
  2-lane road) and 'roundabout' (random exit); seeds >= 1000 are the demonstration seeds by
  convention, evaluation uses seeds 0.. (see docs/driving.md).
- privileged expert: `ExpertEgo.plan()` - highway-env's IDM (longitudinal) + MOBIL (lane change)
  + its lane-following steering controller, run on the true simulator state.

highway-env renders only with SDL_VIDEODRIVER=offscreen (with 'dummy' every frame is black):
`make_env` sets it when it is unset or 'dummy'.
"""
from __future__ import annotations

import dataclasses
import math
import os
from typing import Any

import numpy as np

from qail_ros.errors import QailRosError

__all__ = ['DrivingEnv', 'DrivingError', 'make_env', 'LAYOUTS', 'TRAIN_LAYOUTS',
           'UNSEEN_LAYOUTS', 'DENSITIES', 'COMMANDS', 'LANEFOLLOW', 'LEFT', 'RIGHT', 'STRAIGHT',
           'CHANGELANELEFT', 'CHANGELANERIGHT', 'THROTTLE_ACC', 'BRAKE_DEC', 'MAX_STEER',
           'action_to_control', 'control_to_action', 'Observation']


class DrivingError(QailRosError):
    """A driving environment that cannot be built or used as asked."""


# CARLA RoadOption values (agents.navigation.local_planner.RoadOption), as cilrs_policy takes.
LEFT, RIGHT, STRAIGHT, LANEFOLLOW, CHANGELANELEFT, CHANGELANERIGHT = 1, 2, 3, 4, 5, 6
COMMANDS = {LEFT: 'LEFT', RIGHT: 'RIGHT', STRAIGHT: 'STRAIGHT', LANEFOLLOW: 'LANEFOLLOW',
            CHANGELANELEFT: 'CHANGELANELEFT', CHANGELANERIGHT: 'CHANGELANERIGHT'}

THROTTLE_ACC = 4.0          # m/s^2 at throttle 1 (a CARLA car's order of magnitude)
BRAKE_DEC = 8.0             # m/s^2 at brake 1
MAX_STEER = math.pi / 4     # rad of front-wheel angle at steer 1 (highway-env's default range)

POLICY_HZ = 10              # control steps per simulated second (CARLA benchmarks run 10-20)
TURN_COMMAND_M = 60.0       # the turn command is given this far before the route's exit edge
OFF_ROUTE_STEPS = 30        # steps off the route (wrong exit) before the episode fails
MIN_AVG_SPEED = 5.0         # m/s: time limit = route / MIN_AVG_SPEED + 10 s (NoCrash-like)
EGO_CLEARANCE_M = 40.0      # random traffic is not placed closer than this to the ego car

DENSITIES = ('empty', 'regular', 'dense')

#: layout -> highway-env class path, route length (m), other cars per density.
LAYOUTS: dict[str, dict[str, Any]] = {
    'highway': {'env': 'highway_env.envs.highway_env.HighwayEnv', 'route_m': 200.0,
                'traffic': {'empty': 0, 'regular': 15, 'dense': 30}},
    'merge': {'env': 'highway_env.envs.merge_env.MergeEnv', 'route_m': 200.0,
              'traffic': {'empty': 0, 'regular': 6, 'dense': 14}},
    'roundabout': {'env': 'highway_env.envs.roundabout_env.RoundaboutEnv', 'route_m': 0.0,
                   'traffic': {'empty': 0, 'regular': 4, 'dense': 9}},
}
TRAIN_LAYOUTS = ('highway',)
UNSEEN_LAYOUTS = ('merge', 'roundabout')
_ROUNDABOUT_EXITS = ('exr', 'nxr', 'wxr')   # the ends of the east / north / west exit roads


@dataclasses.dataclass
class Observation:
    """What a driving policy sees at one step (the CILRS inputs)."""

    image: np.ndarray | None    # H x W x 3 uint8 RGB, None when the env does not render
    speed: float                # m/s, measured (>= 0)
    command: int                # CARLA RoadOption value


def action_to_control(action) -> tuple[float, float, float]:
    """CILRS action (accel, steer) in [-1, 1] -> (throttle, steer, brake), carla-roach's way."""
    accel = float(np.clip(action[0], -1.0, 1.0))
    steer = float(np.clip(action[1], -1.0, 1.0))
    return max(accel, 0.0), steer, max(-accel, 0.0)


def control_to_action(throttle: float, steer: float, brake: float) -> np.ndarray:
    """(throttle, steer, brake) -> the CILRS action (accel, steer) (brake wins over throttle)."""
    accel = -float(brake) if brake > 0 else float(throttle)
    return np.clip(np.asarray([accel, steer], np.float32), -1.0, 1.0)


def _physical(throttle: float, steer: float, brake: float) -> dict[str, float]:
    """Control -> highway-env's low-level action (acceleration m/s^2, steering rad)."""
    throttle = float(np.clip(throttle, 0.0, 1.0))
    brake = float(np.clip(brake, 0.0, 1.0))
    accel = -brake * BRAKE_DEC if brake > 0 else throttle * THROTTLE_ACC
    return {'acceleration': accel, 'steering': float(np.clip(steer, -1.0, 1.0)) * MAX_STEER}


def _expert_ego_class():
    """The ego vehicle class (built on first use: it subclasses highway-env's IDMVehicle)."""
    global _EXPERT_EGO
    if _EXPERT_EGO is not None:
        return _EXPERT_EGO
    from highway_env.vehicle.behavior import IDMVehicle
    from highway_env.vehicle.kinematics import Vehicle

    class ExpertEgo(IDMVehicle):
        """The ego car: applies external control; `plan()` is the privileged IDM/MOBIL expert.

        The IDM/MOBIL state (target lane, lane-change timer) lives on the car itself, so the
        planner keeps running whoever drives: it is also where the navigation command comes from.
        """

        def act(self, action: dict | str | None = None) -> None:
            # road.act() calls this every simulation frame without an action: keep the control.
            if isinstance(action, dict):
                Vehicle.act(self, action)

        def plan(self) -> dict[str, float]:
            """IDM/MOBIL's control for the current state (updates the target lane, not the car)."""
            if self.crashed:
                return {'acceleration': 0.0, 'steering': 0.0}
            keep = self.action
            IDMVehicle.act(self)
            planned = {k: float(v) for k, v in self.action.items()}
            self.action = keep
            return planned

        def step(self, dt: float) -> None:
            super().step(dt)
            self.speed = max(float(self.speed), 0.0)   # brakes stop the car, never reverse it

    _EXPERT_EGO = ExpertEgo
    return ExpertEgo


_EXPERT_EGO = None


def _prepare_sdl() -> None:
    if os.environ.get('SDL_VIDEODRIVER', 'dummy') == 'dummy':
        os.environ['SDL_VIDEODRIVER'] = 'offscreen'   # 'dummy' renders black frames
    os.environ.setdefault('SDL_AUDIODRIVER', 'dummy')
    os.environ.setdefault('PYGAME_HIDE_SUPPORT_PROMPT', '1')


def _import_highway_env():
    try:
        import highway_env  # noqa: F401
    except ImportError:
        raise DrivingError('the driving benchmark needs highway-env: pip install '
                           'highway-env==1.12.1 (pinned in requirements.txt)') from None


def _class_from_path(path: str):
    module, name = path.rsplit('.', 1)
    import importlib
    return getattr(importlib.import_module(module), name)


def _wrap_angle(a: float) -> float:
    return (a + math.pi) % (2 * math.pi) - math.pi


class DrivingEnv:
    """One driving episode generator on one layout at one traffic density (see module doc)."""

    def __init__(self, layout: str = 'highway', density: str = 'regular', seed: int = 0,
                 image_size: tuple[int, int] = (200, 88), view_m: float = 80.0,
                 render: bool = True, route_m: float | None = None):
        if layout not in LAYOUTS:
            raise DrivingError(f"unknown layout '{layout}'; known: {', '.join(LAYOUTS)}")
        if density not in DENSITIES:
            raise DrivingError(f"unknown density '{density}'; known: {', '.join(DENSITIES)}")
        width, height = (int(v) for v in image_size)
        if width < 16 or height < 16:
            raise DrivingError(f'image_size must be at least 16x16 (width, height), not '
                               f'{image_size}')
        if view_m <= 0:
            raise DrivingError(f'view_m must be > 0, not {view_m}')
        _prepare_sdl()
        _import_highway_env()
        self.layout, self.density, self.seed = layout, density, int(seed)
        self.image_size = (width, height)
        self.render_images = bool(render)
        spec = LAYOUTS[layout]
        self._route_m = float(spec['route_m'] if route_m is None else route_m)
        self._traffic = int(spec['traffic'][density])
        config = {
            'observation': {'type': 'Kinematics'},
            'action': {'type': 'DiscreteMetaAction'},
            'simulation_frequency': POLICY_HZ, 'policy_frequency': POLICY_HZ,
            'screen_width': width, 'screen_height': height, 'scaling': width / float(view_m),
            'centering_position': [0.3, 0.5], 'offscreen_rendering': True,
            'duration': 1e9, 'offroad_terminal': False,
        }
        if layout == 'highway':
            config.update({'lanes_count': 4, 'vehicles_count': self._traffic,
                           'vehicles_density': 1.0 if density != 'dense' else 1.6,
                           'ego_spacing': 1.5})
        cls = _class_from_path(spec['env'])
        self._env = cls(config=config, render_mode='rgb_array' if render else None)
        self.dt = 1.0 / POLICY_HZ
        self.ego = None
        self.steps = 0
        self.max_steps = 0
        self.episode_seed = self.seed
        self.last_control = (0.0, 0.0, 0.0)
        self.info: dict[str, Any] = {}

    # -- episode --------------------------------------------------------------------------
    def reset(self, seed: int | None = None) -> Observation:
        """Start an episode (same seed -> same road, traffic and route)."""
        self.episode_seed = self.seed if seed is None else int(seed)
        env = self._env
        env.reset(seed=self.episode_seed)
        old = env.vehicle
        ego = _expert_ego_class().create_from(old)
        ego.enable_lane_change = True
        road = env.road
        road.vehicles[road.vehicles.index(old)] = ego
        env.controlled_vehicles = [ego]   # env.vehicle is controlled_vehicles[0]
        self.ego = ego
        rng = env.np_random
        if self.layout == 'roundabout':
            exit_node = _ROUNDABOUT_EXITS[int(rng.integers(len(_ROUNDABOUT_EXITS)))]
            ego.plan_route_to(exit_node)
            ego.target_speed = 10.0
        if self.layout != 'highway':
            self._set_traffic(rng)
        self._build_route()
        self.steps = 0
        self.max_steps = int(math.ceil((self.route_length / MIN_AVG_SPEED + 10.0) * POLICY_HZ))
        self.progress = 0.0
        self._off_route = 0
        self.last_control = (0.0, 0.0, 0.0)
        self.done = False
        self.info = {'success': False, 'collision': False, 'off_road': False,
                     'off_route': False, 'timeout': False, 'route_completion': 0.0,
                     'distance_m': 0.0, 'steps': 0, 'layout': self.layout,
                     'density': self.density, 'seed': self.episode_seed}
        self._command = LANEFOLLOW
        self._update_command()
        return self.observe()

    def _set_traffic(self, rng) -> None:
        """Replace the layout's scripted traffic with `traffic[density]` random IDM cars."""
        from highway_env.vehicle.behavior import IDMVehicle
        road, ego = self._env.road, self.ego
        road.vehicles[:] = [ego]
        lanes = [(a, b, i) for a, tos in road.network.graph.items()
                 for b, ls in tos.items() for i in range(len(ls))]
        placed, attempts = 0, 0
        while placed < self._traffic and attempts < 60 * max(self._traffic, 1):
            attempts += 1
            index = lanes[int(rng.integers(len(lanes)))]
            lane = road.network.get_lane(index)
            s = float(rng.uniform(0.0, max(lane.length - 5.0, 1.0)))
            pos = lane.position(s, 0.0)
            if np.linalg.norm(pos - ego.position) < EGO_CLEARANCE_M:
                continue
            if any(np.linalg.norm(pos - v.position) < 12.0 for v in road.vehicles):
                continue
            if self.layout == 'roundabout':   # roundabout traffic at roundabout speeds
                v = IDMVehicle(road, pos, heading=lane.heading_at(s),
                               speed=float(rng.uniform(7.0, 10.0)))
                v.plan_route_to(str(rng.choice(['exr', 'sxr', 'nxr', 'wxr'])))
            else:
                limit = lane.speed_limit or 20.0
                v = IDMVehicle(road, pos, heading=lane.heading_at(s),
                               speed=float(rng.uniform(0.5, 0.9)) * min(limit, 25.0))
            v.randomize_behavior()
            road.vehicles.append(v)
            placed += 1

    def _build_route(self) -> None:
        """The ego's route: edges, their cumulated lengths, the target distance, turn command."""
        net, ego = self._env.road.network, self.ego
        if self.layout == 'highway':
            edges = [('0', '1')]
        elif self.layout == 'merge':
            edges = [('a', 'b'), ('b', 'c'), ('c', 'd')]
        else:
            edges = [ego.lane_index[:2]] + [r[:2] for r in (ego.route or [])]
            edges = list(dict.fromkeys(edges))
        self.route_edges = edges
        lengths = [net.get_lane((a, b, 0)).length for a, b in edges]
        self._cum = np.concatenate([[0.0], np.cumsum(lengths)])
        self._start = self._route_position() or 0.0
        total = float(self._cum[-1]) - self._start
        self.route_length = min(self._route_m, total) if self._route_m > 0 else total - 1.0
        self.turn_command = None
        self._exit_at = None
        if self.layout == 'roundabout':
            entry = net.get_lane((*edges[0], 0))
            out = net.get_lane((*edges[-1], 0))
            turn = _wrap_angle(out.heading_at(out.length) - entry.heading_at(0.0))
            self.turn_command = (STRAIGHT if abs(turn) < math.pi / 4
                                 else RIGHT if turn > 0 else LEFT)
            # the exit edge: the first edge leaving the ring ('..x' -> '..xs')
            k = next((i for i, (a, b) in enumerate(edges) if b.endswith('xs')), len(edges) - 1)
            self._exit_at = float(self._cum[k]) - self._start

    def _route_position(self) -> float | None:
        """Distance along the route of the ego car; None when it is on no edge of the route.

        The closest lane decides; where lanes overlap (a ring lane next to its exit) the lane the
        car is steering to counts too, if the car is within 5 m of it.
        """
        ego, net = self.ego, self._env.road.network
        for index in (ego.lane_index, ego.target_lane_index):
            edge = tuple(index[:2])
            if edge not in self.route_edges:
                continue
            lane = net.get_lane(index)
            s, lat = (float(v) for v in lane.local_coordinates(ego.position))
            if index is not ego.lane_index and abs(lat) > 5.0:
                continue
            k = self.route_edges.index(edge)
            return float(self._cum[k]) + float(np.clip(s, 0.0, lane.length))
        return None

    def _update_command(self) -> None:
        """The navigation command: the roundabout turn, a planned lane change, or follow lane."""
        ego = self.ego
        command = LANEFOLLOW
        if (self.turn_command is not None and self._exit_at is not None
                and self._exit_at - TURN_COMMAND_M <= self.progress < self._exit_at):
            command = self.turn_command
        elif (ego.target_lane_index[:2] == ego.lane_index[:2]
              and ego.target_lane_index[2] != ego.lane_index[2]):
            # highway-env drives on the right; higher lane ids are further right
            command = (CHANGELANELEFT if ego.target_lane_index[2] < ego.lane_index[2]
                       else CHANGELANERIGHT)
        self._command = command

    # -- observation ----------------------------------------------------------------------
    def observe(self) -> Observation:
        image = self.render() if self.render_images else None
        return Observation(image=image, speed=float(max(self.ego.speed, 0.0)),
                           command=int(self._command))

    def render(self) -> np.ndarray:
        """The camera: H x W x 3 uint8 RGB of the scene around the ego car."""
        if self._env.render_mode != 'rgb_array':
            raise DrivingError('this env was made with render=False; make it with render=True '
                               'to get camera images')
        frame = self._env.render()
        return np.ascontiguousarray(frame, dtype=np.uint8)

    @property
    def command(self) -> int:
        return int(self._command)

    # -- expert ---------------------------------------------------------------------------
    def expert_action(self) -> np.ndarray:
        """The privileged IDM/MOBIL expert's CILRS action (accel, steer) for the current state."""
        plan = self.ego.plan()
        acc, steer = plan['acceleration'], plan['steering']
        accel = acc / THROTTLE_ACC if acc >= 0 else acc / BRAKE_DEC
        return np.clip(np.asarray([accel, steer / MAX_STEER], np.float32), -1.0, 1.0)

    # -- step -----------------------------------------------------------------------------
    def step_control(self, throttle: float, steer: float, brake: float):
        """Apply one CarlaEgoVehicleControl for 1/POLICY_HZ s -> (obs, done, info)."""
        if self.ego is None:
            raise DrivingError('call reset() before step()')
        if self.done:
            raise DrivingError('the episode is over (info says why); call reset()')
        self.last_control = (float(throttle), float(steer), float(brake))
        self.ego.plan()   # the route planner (MOBIL) runs whoever drives: it gives the command
        self.ego.act(_physical(throttle, steer, brake))
        self._env.step(None)
        self.steps += 1
        ego, info = self.ego, self.info
        pos = self._route_position()
        if pos is None:
            self._off_route += 1
        else:
            self._off_route = 0
            self.progress = max(self.progress, pos - self._start)
        info['distance_m'] += float(ego.speed) * self.dt
        info['route_completion'] = float(min(self.progress / max(self.route_length, 1e-6), 1.0))
        info['steps'] = self.steps
        if ego.crashed:
            info['collision'] = True
        elif not ego.on_road:
            info['off_road'] = True
        elif self._off_route > OFF_ROUTE_STEPS:
            info['off_route'] = True
        elif self.progress >= self.route_length:
            info['success'] = True
            info['route_completion'] = 1.0
        elif self.steps >= self.max_steps:
            info['timeout'] = True
        self.done = any(info[k] for k in
                        ('success', 'collision', 'off_road', 'off_route', 'timeout'))
        self._update_command()
        return self.observe(), self.done, dict(info)

    def step(self, action):
        """Apply a CILRS action (accel, steer) in [-1, 1] -> (obs, done, info)."""
        return self.step_control(*action_to_control(np.asarray(action, np.float64).ravel()))

    def close(self) -> None:
        self._env.close()


def make_env(density: str = 'regular', seed: int = 0, town: str = 'highway',
             image_size: tuple[int, int] = (200, 88), *, render: bool = True,
             view_m: float = 80.0, route_m: float | None = None) -> DrivingEnv:
    """A DrivingEnv on layout `town` ('highway', 'merge', 'roundabout') at `density`.

    `image_size` is (width, height) of the camera; `render=False` skips the camera (the expert
    needs none: evaluation of the expert runs several times faster).
    """
    return DrivingEnv(layout=town, density=density, seed=seed, image_size=image_size,
                      view_m=view_m, render=render, route_m=route_m)
