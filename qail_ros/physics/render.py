"""Camera images of a physics task: MuJoCo's renderer, a schematic side view, or a state plot.

    camera = make_camera(env, 'schematic', width=96, height=72)
    rgb = camera.render()                  # (height, width, 3) uint8

- 'mujoco': dm_control's own camera 0 (the suite's tracking side camera), or MuJoCo's renderer
  on a Gymnasium MuJoCo env's model (its camera 0, else the free camera). Needs an OpenGL back
  end: MUJOCO_GL=egl (headless GPU or Mesa's EGL) or osmesa, set before dm_control is first
  imported (`qail_ros.physics.tasks` sets 'disable' otherwise).
- 'schematic': a numpy drawing of the same side view (x horizontal, z up) from the simulation
  state: capsules, cylinders and ellipsoids as thick segments along their axis, spheres as
  disks, boxes as their x-z extent, the floor as a band; centred on the first body's x so
  walkers stay in view. No OpenGL, identical on every machine (CI, laptops), a few hundred
  microseconds at 96x72. It shows exactly what the state says, which is what a camera topic
  for recording and for policies that take images needs here.
  The side view suits planar bodies (SIDE_VIEW: cartpole, walker, hopper, cheetah, finger,
  ...); for any other body (reacher and point_mass move in x-y, quadrupeds in 3-D) 'schematic'
  falls back to MuJoCo's renderer when MUJOCO_GL allows it, else to the state plot.
- 'state': a plain plot of the observation vector (one bar per dimension, scaled by the largest
  magnitude seen), for tasks without a MuJoCo model (classic-control Gymnasium envs, your own)
  and the fallback above.
- 'auto': mujoco when it renders, else schematic where it knows the body, else state (one log
  line says which).
"""
from __future__ import annotations

import logging
import os

import numpy as np

from qail_ros.errors import ParameterError

__all__ = ['CAMERAS', 'SIDE_VIEW', 'SchematicCamera', 'MujocoCamera', 'StatePlotCamera',
           'make_camera']

log = logging.getLogger('qail_ros.physics')

CAMERAS = ('auto', 'schematic', 'mujoco', 'state')
#: bodies (dm_control domains, Gymnasium MuJoCo env names) that move in the x-z plane, which
#: the schematic side view draws faithfully
SIDE_VIEW = frozenset({
    'cartpole', 'walker', 'hopper', 'cheetah', 'finger', 'acrobot', 'pendulum', 'ball_in_cup',
    'manipulator', 'humanoid', 'humanoid_CMU', 'InvertedPendulum', 'InvertedDoublePendulum',
    'Hopper', 'Walker2d', 'HalfCheetah', 'Humanoid', 'HumanoidStandup'})

_PLANE, _SPHERE, _CAPSULE, _ELLIPSOID, _CYLINDER, _BOX = 0, 2, 3, 4, 5, 6
_SKY = np.array([180, 205, 235], np.uint8)
_FLOOR = np.array([90, 110, 90], np.uint8)
_PALETTE = np.array([[60, 60, 60], [200, 80, 40], [40, 90, 200], [230, 170, 30],
                     [120, 50, 160], [30, 150, 120], [200, 60, 140], [100, 100, 100]], np.uint8)


class SchematicCamera:
    """Side view (x-z plane) of every non-plane geom, drawn with numpy; see the module doc."""

    kind = 'schematic'

    def __init__(self, env, width: int = 96, height: int = 72, view_m: float = 4.0,
                 height_m: float | None = None):
        self.env = env
        self.width, self.height = int(width), int(height)
        self.view_m = float(view_m)
        self.px_per_m = self.width / self.view_m
        self.height_m = float(height_m) if height_m else self.height / self.px_per_m
        model = env.physics.model
        self._types = np.asarray(model.geom_type).copy()
        self._sizes = np.asarray(model.geom_size).copy()
        # one colour per body (the suite's materials make every geom the same grey)
        bodies = np.asarray(model.geom_bodyid)
        self._colors = _PALETTE[bodies % len(_PALETTE)]
        self._draw = [i for i in range(model.ngeom) if self._types[i] != _PLANE]
        ys = np.arange(self.height, dtype=np.float32)
        xs = np.arange(self.width, dtype=np.float32)
        self._px, self._py = np.meshgrid(xs + 0.5, ys + 0.5)

    def _to_px(self, x: float, z: float, x0: float) -> tuple[float, float]:
        u = (x - x0) * self.px_per_m + self.width / 2.0
        v = self.height - (z + 0.1 * self.height_m) * self.px_per_m
        return u, v

    def render(self) -> np.ndarray:
        data = self.env.physics.data
        # centre on the drawn geoms' mean x so walkers and runners stay in view
        x0 = float(np.mean(data.geom_xpos[self._draw, 0])) if self._draw else 0.0
        img = np.empty((self.height, self.width, 3), np.uint8)
        img[:] = _SKY
        _, ground = self._to_px(0.0, 0.0, x0)
        img[max(int(ground), 0):] = _FLOOR
        for i in self._draw:
            self._draw_geom(img, i, data, x0)
        return img

    def _draw_geom(self, img: np.ndarray, i: int, data, x0: float) -> None:
        kind, size = self._types[i], self._sizes[i]
        pos, mat = data.geom_xpos[i], data.geom_xmat[i].reshape(3, 3)
        u, v = self._to_px(pos[0], pos[2], x0)
        if kind == _BOX:
            half = np.abs(mat) @ size             # world-axis half extents of the rotated box
            mask = ((np.abs(self._px - u) <= max(half[0] * self.px_per_m, 0.5))
                    & (np.abs(self._py - v) <= max(half[2] * self.px_per_m, 0.5)))
        else:
            radius = max(float(size[0]) * self.px_per_m, 0.7)
            half_len = float(size[1]) if kind in (_CAPSULE, _CYLINDER) else (
                float(size[2]) if kind == _ELLIPSOID else 0.0)
            axis = mat[:, 2] * half_len * self.px_per_m
            du, dv = axis[0], -axis[2]
            a = (u - du, v - dv)
            seg = np.array([2 * du, 2 * dv])
            denom = float(seg @ seg)
            if denom < 1e-9:
                t = 0.0
            else:
                t = np.clip(((self._px - a[0]) * seg[0] + (self._py - a[1]) * seg[1]) / denom,
                            0.0, 1.0)
            dx = self._px - (a[0] + t * seg[0])
            dy = self._py - (a[1] + t * seg[1])
            mask = dx * dx + dy * dy <= radius * radius
        img[mask] = self._colors[i]


class MujocoCamera:
    """dm_control's renderer (camera 0); raises ParameterError when no OpenGL back end works."""

    kind = 'mujoco'

    def __init__(self, env, width: int = 96, height: int = 72):
        self.env = env
        self.width, self.height = int(width), int(height)
        try:
            self.render()
        except Exception as exc:  # noqa: BLE001 - GL back ends fail in many ways
            raise ParameterError(
                f'MuJoCo cannot render here ({type(exc).__name__}: {exc}); set MUJOCO_GL=egl '
                '(or osmesa) before starting the node, or use camera:=schematic') from None

    def render(self) -> np.ndarray:
        physics = self.env.physics
        if hasattr(physics, 'render'):   # dm_control
            return np.ascontiguousarray(physics.render(self.height, self.width, camera_id=0))
        import mujoco
        model = physics.model
        if getattr(self, '_model', None) is not model:
            self._renderer = mujoco.Renderer(model, self.height, self.width)
            self._model = model
        self._renderer.update_scene(physics.data, camera=0 if model.ncam > 0 else -1)
        return np.ascontiguousarray(self._renderer.render())


class StatePlotCamera:
    """The observation vector as bars (green up, red down) around a mid line, each dimension
    scaled by the largest magnitude it has shown so far; needs no MuJoCo and no OpenGL."""

    kind = 'state'

    def __init__(self, env, width: int = 96, height: int = 72):
        self.env = env
        self.width, self.height = int(width), int(height)
        self._scale = np.ones(int(env.obs_dim))

    def render(self) -> np.ndarray:
        obs = np.asarray(getattr(self.env, 'last_obs', None) if getattr(
            self.env, 'last_obs', None) is not None else np.zeros(len(self._scale)), np.float64)
        obs = np.nan_to_num(obs.ravel()[:len(self._scale)])
        self._scale = np.maximum(self._scale, np.abs(obs))
        img = np.empty((self.height, self.width, 3), np.uint8)
        img[:] = 245
        mid = self.height // 2
        img[mid] = 120
        n = len(obs)
        edges = np.linspace(0, self.width, n + 1).astype(int)
        for i, v in enumerate(obs / self._scale):
            x0, x1 = edges[i], max(edges[i] + 1, edges[i + 1] - 1)
            h = int(round(abs(v) * (mid - 1)))
            if v >= 0:
                img[mid - h:mid, x0:x1] = (40, 160, 60)
            else:
                img[mid + 1:mid + 1 + h, x0:x1] = (200, 60, 40)
        return img


def _knows_body(env) -> bool:
    spec = getattr(env, 'spec', None)
    return getattr(spec, 'view', None) in SIDE_VIEW


def make_camera(env, kind: str = 'auto', width: int = 96, height: int = 72,
                view_m: float = 4.0):
    """A camera for `env` (a qail_ros.physics env); see the module doc for the kinds and the
    fallbacks."""
    if kind not in CAMERAS:
        raise ParameterError(f"camera must be one of {', '.join(CAMERAS)}, not '{kind}'")
    if kind == 'state':
        return StatePlotCamera(env, width, height)
    has_model = env.physics is not None
    gl = os.environ.get('MUJOCO_GL', 'disable') != 'disable'
    if kind == 'mujoco' and not has_model:
        raise ParameterError(f'camera:=mujoco needs a MuJoCo model; task {env.task!r} has none: '
                             'use camera:=state')
    if kind == 'mujoco' and not gl:
        raise ParameterError('camera:=mujoco needs an OpenGL back end: start the node with '
                             'MUJOCO_GL=egl (or osmesa) in its environment, or use '
                             'camera:=schematic')
    known = has_model and _knows_body(env)
    if has_model and gl and (kind in ('auto', 'mujoco') or not known):
        try:
            return MujocoCamera(env, width, height)
        except ParameterError:
            if kind == 'mujoco':
                raise
            log.info('MuJoCo rendering unavailable (MUJOCO_GL=%s)', os.environ.get('MUJOCO_GL'))
    if known:
        return SchematicCamera(env, width, height, view_m)
    log.info('the schematic view does not know the body of %s: state plot camera', env.task)
    return StatePlotCamera(env, width, height)
