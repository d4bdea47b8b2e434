"""Camera images of a physics task: MuJoCo's renderer, or a schematic side view without OpenGL.

    camera = make_camera(env, 'schematic', width=96, height=72)
    rgb = camera.render()                  # (height, width, 3) uint8

- 'mujoco': dm_control's own camera 0 (the suite's tracking side camera). Needs an OpenGL back
  end: MUJOCO_GL=egl (headless GPU or Mesa's EGL) or osmesa, set before dm_control is first
  imported (`qail_ros.physics.tasks` sets 'disable' otherwise).
- 'schematic': a numpy drawing of the same side view (x horizontal, z up) from the simulation
  state: capsules, cylinders and ellipsoids as thick segments along their axis, spheres as
  disks, boxes as their x-z extent, the floor as a band; centred on the first body's x so
  walkers stay in view. No OpenGL, identical on every machine (CI, laptops), a few hundred
  microseconds at 96x72. It shows exactly what the state says, which is what a camera topic
  for recording and for policies that take images needs here.
- 'auto': mujoco when it renders, else schematic (one log line says which).
"""
from __future__ import annotations

import logging
import os

import numpy as np

from qail_ros.errors import ParameterError

__all__ = ['CAMERAS', 'SchematicCamera', 'MujocoCamera', 'make_camera']

log = logging.getLogger('qail_ros.physics')

CAMERAS = ('auto', 'schematic', 'mujoco')

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
        return np.ascontiguousarray(self.env.physics.render(self.height, self.width,
                                                            camera_id=0))


def make_camera(env, kind: str = 'auto', width: int = 96, height: int = 72,
                view_m: float = 4.0):
    """A camera for `env` (a qail_ros.physics PhysicsEnv); see the module doc for the kinds."""
    if kind not in CAMERAS:
        raise ParameterError(f"camera must be one of {', '.join(CAMERAS)}, not '{kind}'")
    if kind in ('auto', 'mujoco') and os.environ.get('MUJOCO_GL', 'disable') != 'disable':
        try:
            return MujocoCamera(env, width, height)
        except ParameterError:
            if kind == 'mujoco':
                raise
            log.info('MuJoCo rendering unavailable (MUJOCO_GL=%s): schematic camera',
                     os.environ.get('MUJOCO_GL'))
    elif kind == 'mujoco':
        raise ParameterError('camera:=mujoco needs an OpenGL back end: start the node with '
                             'MUJOCO_GL=egl (or osmesa) in its environment, or use '
                             'camera:=schematic')
    return SchematicCamera(env, width, height, view_m)
