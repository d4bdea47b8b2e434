"""The driving benchmark API on a real CARLA server (for users who have one).

Same shape as qail_ros.driving.env / rollout: `make_env(density, seed, town, image_size)` gives
a `CarlaEnv` with reset / step / step_control / expert_action / observe / info, so `rollout`,
`evaluate` and `collect_demonstrations` (pass `make=carla_adapter.make_env`) run on it too.

    from qail_ros.driving import carla_adapter
    env = carla_adapter.make_env('regular', seed=0, town='Town02', image_size=(900, 256))

NoCrash conventions (Codevilla et al. 2019): train town Town01, unseen town Town02; traffic
empty / regular / dense = 0 / 20 / 100 cars in Town01 and 0 / 15 / 70 in Town02 (driven by the
Traffic Manager; NoCrash's pedestrians are not spawned here). Synchronous mode at 10 Hz, a front
RGB camera (fov 100, 1.5 m ahead of the centre, 2.0 m up, as carla-roach's CILRS camera), a
collision sensor, a route between two spawn points picked by the seed (CARLA's
GlobalRoutePlanner, 2 m resolution), the navigation command of the route waypoint closest ahead,
and as expert CARLA's BasicAgent on that route (privileged: it reads the map and actors).

Needs: `pip install carla==<your server's version>` (the client must match the server) and, for
the route planner and expert, CARLA's PythonAPI/carla folder (the `agents` package) on
PYTHONPATH. Everything imports lazily; without a reachable server `connect` raises
CarlaUnavailableError saying so. NOT tested against a server here (no GPU server can run on
this machine): only the no-server path is tested.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from qail_ros.driving.env import (BRAKE_DEC, LANEFOLLOW, MIN_AVG_SPEED, POLICY_HZ,  # noqa: F401
                                  THROTTLE_ACC, DrivingError, Observation, action_to_control,
                                  control_to_action)

__all__ = ['CarlaEnv', 'CarlaUnavailableError', 'connect', 'make_env', 'TRAFFIC', 'TOWNS']

#: NoCrash's number of cars per town and density.
TRAFFIC = {'Town01': {'empty': 0, 'regular': 20, 'dense': 100},
           'Town02': {'empty': 0, 'regular': 15, 'dense': 70}}
TOWNS = {'train': 'Town01', 'unseen': 'Town02'}
SUCCESS_RADIUS_M = 5.0


class CarlaUnavailableError(DrivingError):
    """No CARLA client package, or no CARLA server reachable."""


def _carla():
    try:
        import carla
    except ImportError:
        raise CarlaUnavailableError(
            'the CARLA adapter needs the CARLA Python client: pip install carla==<the version of '
            'your CARLA server> (e.g. 0.9.16); without a server use the highway-env benchmark, '
            'qail_ros.driving.make_env') from None
    return carla


def _agents():
    try:
        from agents.navigation.basic_agent import BasicAgent
        from agents.navigation.global_route_planner import GlobalRoutePlanner
    except ImportError:
        raise CarlaUnavailableError(
            "the CARLA route planner and expert come from CARLA's PythonAPI 'agents' package, "
            'which the pip client does not ship: add <CARLA_ROOT>/PythonAPI/carla to PYTHONPATH'
        ) from None
    return BasicAgent, GlobalRoutePlanner


def connect(host: str = '127.0.0.1', port: int = 2000, timeout_s: float = 2.0):
    """A carla.Client connected to a running server; CarlaUnavailableError if none answers."""
    carla = _carla()
    client = carla.Client(host, int(port))
    client.set_timeout(float(timeout_s))
    try:
        version = client.get_server_version()
    except RuntimeError as exc:
        raise CarlaUnavailableError(
            f'no CARLA server reachable at {host}:{port} within {timeout_s:g} s ({exc}); start '
            'one (./CarlaUE4.sh -RenderOffScreen, needs a GPU) or point host/port at it, or use '
            'the CPU benchmark qail_ros.driving.make_env (highway-env)') from None
    client_version = getattr(carla, '__version__', None) or client.get_client_version()
    if version.split('-')[0] != str(client_version).split('-')[0]:
        raise CarlaUnavailableError(
            f'CARLA server {version} and client {client_version} differ: pip install '
            f'carla=={version.split("-")[0]}')
    client.set_timeout(max(float(timeout_s), 10.0))   # map loads take seconds
    return client


class CarlaEnv:
    """One CARLA town at one NoCrash density; the DrivingEnv interface (see module doc)."""

    def __init__(self, client, town: str = 'Town01', density: str = 'regular', seed: int = 0,
                 image_size: tuple[int, int] = (900, 256), fov: float = 100.0,
                 render: bool = True):
        if density not in ('empty', 'regular', 'dense'):
            raise DrivingError(f"unknown density '{density}'; known: empty, regular, dense")
        self.carla = _carla()
        self.client, self.town, self.density, self.seed = client, town, density, int(seed)
        self.image_size, self.fov, self.render_images = tuple(image_size), float(fov), render
        self.n_cars = TRAFFIC.get(town, TRAFFIC['Town02'])[density]
        self.world = None
        self._actors: list[Any] = []
        self.dt = 1.0 / POLICY_HZ
        self.done, self.steps, self.info = False, 0, {}

    # -- episode --------------------------------------------------------------------------
    def reset(self, seed: int | None = None) -> Observation:
        carla = self.carla
        BasicAgent, GlobalRoutePlanner = _agents()
        self.episode_seed = self.seed if seed is None else int(seed)
        rng = np.random.default_rng(self.episode_seed)
        self._destroy()
        world = self.client.get_world()
        if not world.get_map().name.endswith(self.town):
            world = self.client.load_world(self.town)
        settings = world.get_settings()
        settings.synchronous_mode, settings.fixed_delta_seconds = True, self.dt
        world.apply_settings(settings)
        tm = self.client.get_trafficmanager()
        tm.set_synchronous_mode(True)
        tm.set_random_device_seed(self.episode_seed)
        self.world, cmap = world, world.get_map()
        spawns = cmap.get_spawn_points()
        order = rng.permutation(len(spawns))
        start, goal = spawns[order[0]], spawns[order[1]]
        lib = world.get_blueprint_library()
        self.ego = world.spawn_actor(lib.find('vehicle.lincoln.mkz_2017'), start)
        self._actors.append(self.ego)
        cam_bp = lib.find('sensor.camera.rgb')
        cam_bp.set_attribute('image_size_x', str(self.image_size[0]))
        cam_bp.set_attribute('image_size_y', str(self.image_size[1]))
        cam_bp.set_attribute('fov', str(self.fov))
        self._frame = None
        cam = world.spawn_actor(cam_bp, carla.Transform(carla.Location(x=1.5, z=2.0)),
                                attach_to=self.ego)
        cam.listen(self._on_image)
        col = world.spawn_actor(lib.find('sensor.other.collision'), carla.Transform(),
                                attach_to=self.ego)
        self._collided = False
        col.listen(self._on_collision)
        self._actors += [cam, col]
        cars = [b for b in lib.filter('vehicle.*')
                if int(b.get_attribute('number_of_wheels')) == 4]
        for k in order[2:2 + self.n_cars]:
            car = world.try_spawn_actor(cars[int(rng.integers(len(cars)))], spawns[k])
            if car is not None:
                car.set_autopilot(True, tm.get_port())
                self._actors.append(car)
        planner = GlobalRoutePlanner(cmap, 2.0)
        self.route = planner.trace_route(start.location, goal.location)
        self._route_xy = np.asarray([[w.transform.location.x, w.transform.location.y]
                                     for w, _ in self.route])
        seg = np.linalg.norm(np.diff(self._route_xy, axis=0), axis=1)
        self._route_cum = np.concatenate([[0.0], np.cumsum(seg)])
        self.route_length = float(self._route_cum[-1])
        self._goal = goal.location
        self._agent = BasicAgent(self.ego, target_speed=25.0)
        self._agent.set_global_plan(self.route, stop_waypoint_creation=True,
                                    clean_queue=True)
        self._index = 0
        self.steps, self.done = 0, False
        self.max_steps = int(math.ceil((self.route_length / MIN_AVG_SPEED + 10.0) * POLICY_HZ))
        self.info = {'success': False, 'collision': False, 'off_road': False,
                     'off_route': False, 'timeout': False, 'route_completion': 0.0,
                     'distance_m': 0.0, 'steps': 0, 'layout': self.town,
                     'density': self.density, 'seed': self.episode_seed}
        world.tick()
        return self.observe()

    def _on_image(self, image) -> None:
        data = np.frombuffer(image.raw_data, np.uint8).reshape(image.height, image.width, 4)
        self._frame = np.ascontiguousarray(data[..., 2::-1])   # BGRA -> RGB

    def _on_collision(self, _event) -> None:
        self._collided = True

    def _progress_index(self) -> int:
        loc = self.ego.get_location()
        ahead = self._route_xy[self._index:self._index + 50]
        d = np.linalg.norm(ahead - np.asarray([loc.x, loc.y]), axis=1)
        self._index += int(np.argmin(d))
        return self._index

    # -- observation / expert -------------------------------------------------------------
    @property
    def command(self) -> int:
        option = self.route[min(self._index, len(self.route) - 1)][1]
        value = int(getattr(option, 'value', LANEFOLLOW))
        return value if 1 <= value <= 6 else LANEFOLLOW

    def speed(self) -> float:
        v = self.ego.get_velocity()
        return float(math.sqrt(v.x ** 2 + v.y ** 2 + v.z ** 2))

    def observe(self) -> Observation:
        image = self._frame if self.render_images else None
        return Observation(image=image, speed=self.speed(), command=self.command)

    def render(self) -> np.ndarray:
        if self._frame is None:
            raise DrivingError('no camera frame yet: call reset() (which ticks the world)')
        return self._frame

    def expert_action(self) -> np.ndarray:
        """CARLA's BasicAgent on the route (privileged) as a CILRS action (accel, steer)."""
        c = self._agent.run_step()
        return control_to_action(c.throttle, c.steer, c.brake)

    # -- step -----------------------------------------------------------------------------
    def step_control(self, throttle: float, steer: float, brake: float):
        if self.done:
            raise DrivingError('the episode is over (info says why); call reset()')
        carla = self.carla
        self.ego.apply_control(carla.VehicleControl(throttle=float(throttle),
                                                    steer=float(steer), brake=float(brake)))
        self.world.tick()
        self.steps += 1
        info = self.info
        k = self._progress_index()
        info['route_completion'] = float(self._route_cum[k] / max(self.route_length, 1e-6))
        info['distance_m'] += self.speed() * self.dt
        info['steps'] = self.steps
        wp = self.world.get_map().get_waypoint(self.ego.get_location(), project_to_road=False)
        if self._collided:
            info['collision'] = True
        elif wp is None:
            info['off_road'] = True
        elif self.ego.get_location().distance(self._goal) < SUCCESS_RADIUS_M:
            info['success'], info['route_completion'] = True, 1.0
        elif self.steps >= self.max_steps:
            info['timeout'] = True
        self.done = any(info[k] for k in ('success', 'collision', 'off_road', 'timeout'))
        return self.observe(), self.done, dict(info)

    def step(self, action):
        return self.step_control(*action_to_control(np.asarray(action, np.float64).ravel()))

    def _destroy(self) -> None:
        for actor in reversed(self._actors):
            try:
                if hasattr(actor, 'stop'):
                    actor.stop()
                actor.destroy()
            except RuntimeError:
                pass
        self._actors = []

    def close(self) -> None:
        self._destroy()
        if self.world is not None:
            settings = self.world.get_settings()
            settings.synchronous_mode = False
            self.world.apply_settings(settings)


def make_env(density: str = 'regular', seed: int = 0, town: str = 'Town01',
             image_size: tuple[int, int] = (900, 256), *, render: bool = True,
             host: str = '127.0.0.1', port: int = 2000, timeout_s: float = 2.0,
             **_ignored) -> CarlaEnv:
    """A CarlaEnv on a running CARLA server (CarlaUnavailableError when none is reachable)."""
    return CarlaEnv(connect(host, port, timeout_s), town=town, density=density, seed=seed,
                    image_size=image_size, render=render)


make_env.lockstep = False   # rollout runs CARLA episodes one after another, not side by side
