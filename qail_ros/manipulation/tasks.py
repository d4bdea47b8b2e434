"""Language-conditioned table-top tasks in MuJoCo, with scripted experts and a CPU camera.

    env = TabletopEnv('place', seed=3)
    obs = env.reset()                 # obs.image (64, 64, 3) uint8, obs.instruction (str)
    while not env.done:
        obs, info = env.step(expert_action(env))      # 7-DoF OpenVLA-style action

The scene: a table, three blocks (red, green, blue: free bodies, 3.6 cm cubes, MuJoCo contact
physics) and two plates (yellow, purple) at random non-overlapping places each episode; a
gripper moved as a mocap body. Actions are OpenVLA's 7-DoF end-effector deltas: (dx, dy, dz) in
[-1, 1] (x STEP_M metres per step), three rotation deltas (ignored: the gripper is a vertical
top-down gripper and the experts keep them 0), and the gripper command (> 0 close, <= 0 open).

Grasping is a suction-style attachment: closing the gripper when a block lies under its
fingers (within GRASP_XY of the block's centre, the fingertips within GRASP_Z of its top)
attaches that block to the gripper until it opens; the released block falls and settles under
MuJoCo's contact physics. Closing over nothing leaves the gripper closed and empty (visible in
the image) until it opens again.

Tasks (instructions are templated from the episode's target block and plate):
- 'lift':  "pick up the {color} block"; success when that block is held 5 cm above the table.
- 'place': "put the {color} block on the {plate} plate"; success when it rests on that plate,
  released (centre within PLATE_R of the plate's centre).

The camera (no OpenGL here: `render_topdown`) is an eye-in-hand camera drawn with numpy: a
pinhole CAMERA_ABOVE metres over the fingertips looking straight down, so the view is centred
on the gripper (the direction to an object is where it lies in the image) and its scale tells
the height (the table and the blocks grow as the gripper descends). The fingertips are drawn
in the image centre, apart when open and together when closed; a held block sits between
them.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from qail_ros.errors import ParameterError

__all__ = ['TASKS', 'COLORS', 'PLATES', 'TabletopEnv', 'Observation', 'expert_action',
           'instruction_for', 'render_topdown', 'STEP_M', 'ACTION_DIM']

TASKS = ('lift', 'place')
COLORS = ('red', 'green', 'blue')
PLATES = ('yellow', 'purple')
ACTION_DIM = 7
STEP_M = 0.015              # metres per unit action per control step
CONTROL_DT = 0.05           # 20 Hz control, 10 physics steps of 5 ms
HALF = 0.018                # block half size (m)
PLATE_R = 0.04
GRASP_XY = 0.025
GRASP_Z = 0.02
HOVER_Z = 0.09              # the experts' travel height of the fingertips
LIFT_Z = 0.05               # 'lift' success: block bottom this high
WORKSPACE = 0.13            # objects are placed in [-W, W]^2; the gripper moves in +-0.16
GRIP_LIMITS = ((-0.16, 0.16), (-0.16, 0.16), (0.0, 0.16))
MAX_STEPS = {'lift': 45, 'place': 80}
SCENE_DIM = 3 + 1 + 3 * 3 + 2 * 2
STATE_DIM = SCENE_DIM + 3 + 2

_RGB = {'red': (210, 40, 40), 'green': (40, 170, 60), 'blue': (40, 80, 220),
        'yellow': (230, 200, 40), 'purple': (150, 60, 170)}
_TABLE = np.array([150, 130, 110], np.uint8)
_GRIPPER = np.array([245, 245, 245], np.uint8)
IMAGE_SIZE = 48
CAMERA_ABOVE = 0.08         # the wrist camera's height over the fingertips (m)
FOCAL = 0.3                 # focal length in image widths: 0.57 m across at hover height

_XML = """
<mujoco model="qail_tabletop">
  <option timestep="0.005" gravity="0 0 -9.81"/>
  <default><geom friction="1 0.01 0.001" solref="0.01 1"/></default>
  <worldbody>
    <geom name="table" type="plane" size="0.3 0.3 0.01"/>
    {blocks}
  </worldbody>
</mujoco>
"""
_BLOCK = ('<body name="{c}" pos="0 0 {h}"><freejoint name="{c}"/>'
          '<geom type="box" size="{h} {h} {h}" mass="0.05"/></body>')


def instruction_for(task: str, color: str, plate: str) -> str:
    if task == 'lift':
        return f'pick up the {color} block'
    return f'put the {color} block on the {plate} plate'


@dataclasses.dataclass
class Observation:
    image: np.ndarray         # (IMAGE_SIZE, IMAGE_SIZE, 3) uint8 (48 x 48)
    instruction: str


class TabletopEnv:
    """One episode at a time of a task; `reset(seed)` draws the layout and the instruction."""

    def __init__(self, task: str, seed: int = 0, image_size: int = IMAGE_SIZE):
        if task not in TASKS:
            raise ParameterError(f'manipulation task {task!r}: choose one of {list(TASKS)}')
        import mujoco
        self._mj = mujoco
        self.task = task
        self.image_size = int(image_size)
        xml = _XML.format(blocks='\n    '.join(_BLOCK.format(c=c, h=HALF) for c in COLORS))
        self.model = mujoco.MjModel.from_xml_string(xml)
        self.data = mujoco.MjData(self.model)
        self._substeps = int(round(CONTROL_DT / self.model.opt.timestep))
        self._qadr = {c: int(self.model.jnt_qposadr[self.model.joint(c).id]) for c in COLORS}
        self._vadr = {c: int(self.model.jnt_dofadr[self.model.joint(c).id]) for c in COLORS}
        self.max_steps = MAX_STEPS[task]
        self.rng = np.random.default_rng(seed)
        self.reset(seed)

    # -- state ------------------------------------------------------------------------------
    def block_pos(self, color: str) -> np.ndarray:
        a = self._qadr[color]
        return self.data.qpos[a:a + 3].copy()

    def state(self) -> np.ndarray:
        """Privileged state (STATE_DIM,), in decimetres, an auxiliary training target only
        (policies see the image and the instruction): the scene (SCENE_DIM: gripper xyz,
        gripper closed, each block's xyz, each plate's xy), then the instruction's targets
        relative to the gripper (the named block's top xyz, the named plate's xy)."""
        g = self.gripper
        p = self.block_pos(self.target)
        q = self.plates[self.plate]
        parts = [g * 10, [float(self.closed)]]
        parts += [self.block_pos(c) * 10 for c in COLORS]
        parts += [self.plates[name] * 10 for name in PLATES]
        parts += [(p + (0.0, 0.0, HALF) - g) * 10, (q - g[:2]) * 10]
        return np.concatenate([np.asarray(x, np.float64).ravel() for x in parts])

    def reset(self, seed: int | None = None) -> Observation:
        if seed is not None:
            self.rng = np.random.default_rng(seed)
        rng = self.rng
        self._mj.mj_resetData(self.model, self.data)
        points = _spread(rng, len(COLORS) + len(PLATES), min_dist=0.075)
        for c, p in zip(COLORS, points[:3]):
            a = self._qadr[c]
            self.data.qpos[a:a + 3] = (p[0], p[1], HALF)
            yaw = rng.uniform(-np.pi / 4, np.pi / 4)
            self.data.qpos[a + 3:a + 7] = (np.cos(yaw / 2), 0, 0, np.sin(yaw / 2))
        self.plates = {name: points[3 + i] for i, name in enumerate(PLATES)}
        self.target = COLORS[int(rng.integers(len(COLORS)))]
        self.plate = PLATES[int(rng.integers(len(PLATES)))]
        self.instruction = instruction_for(self.task, self.target, self.plate)
        self.gripper = np.array([rng.uniform(-0.1, 0.1), rng.uniform(-0.1, 0.1),
                                 rng.uniform(0.07, 0.12)])
        self.closed = False
        self.held: str | None = None
        self.steps = 0
        self.success = False
        self.done = False
        self._mj.mj_forward(self.model, self.data)
        return self.observe()

    def observe(self) -> Observation:
        return Observation(render_topdown(self, self.image_size), self.instruction)

    # -- dynamics ---------------------------------------------------------------------------
    def step(self, action) -> tuple[Observation, dict]:
        if self.done:
            raise RuntimeError('episode is over: call reset()')
        a = np.asarray(action, dtype=np.float64).reshape(-1)
        if a.shape[0] != ACTION_DIM or not np.all(np.isfinite(a)):
            raise ParameterError(f'action must be {ACTION_DIM} finite numbers, got {a}')
        move = np.clip(a[:3], -1.0, 1.0) * STEP_M
        self.gripper = np.clip(self.gripper + move, [lo for lo, _ in GRIP_LIMITS],
                               [hi for _, hi in GRIP_LIMITS])
        close = a[6] > 0.0
        if close and not self.closed:
            self.held = self._graspable()
            self.closed = True
        elif not close and self.closed:
            self.closed, self.held = False, None
        if self.held is not None:           # keep the gripper out of the table
            self.gripper[2] = max(self.gripper[2], 0.0)
        for _ in range(self._substeps):
            if self.held is not None:
                self._attach(self.held)
            self._mj.mj_step(self.model, self.data)
        if self.held is not None:
            self._attach(self.held)
            self._mj.mj_forward(self.model, self.data)
        self.steps += 1
        self.success = self._success()
        self.done = self.success or self.steps >= self.max_steps
        return self.observe(), {'success': self.success, 'steps': self.steps,
                                'held': self.held}

    def _graspable(self) -> str | None:
        best, best_d = None, GRASP_XY
        for c in COLORS:
            p = self.block_pos(c)
            d = float(np.hypot(*(p[:2] - self.gripper[:2])))
            if d <= best_d and abs(self.gripper[2] - (p[2] + HALF)) <= GRASP_Z:
                best, best_d = c, d
        return best

    def _attach(self, color: str) -> None:
        a, v = self._qadr[color], self._vadr[color]
        self.data.qpos[a:a + 3] = self.gripper - (0.0, 0.0, HALF)
        self.data.qpos[a + 3:a + 7] = (1.0, 0.0, 0.0, 0.0)
        self.data.qvel[v:v + 6] = 0.0

    def _success(self) -> bool:
        p = self.block_pos(self.target)
        if self.task == 'lift':
            return self.held == self.target and p[2] - HALF >= LIFT_Z
        on_plate = np.hypot(*(p[:2] - self.plates[self.plate])) <= PLATE_R
        a = self._vadr[self.target]
        resting = float(np.abs(self.data.qvel[a:a + 3]).max()) < 0.05 and p[2] < HALF + 0.01
        return self.held is None and bool(on_plate) and resting


def _spread(rng: np.random.Generator, n: int, min_dist: float) -> list[np.ndarray]:
    """n points in the workspace square, pairwise at least `min_dist` apart."""
    points: list[np.ndarray] = []
    while len(points) < n:
        p = rng.uniform(-WORKSPACE, WORKSPACE, 2)
        if all(np.hypot(*(p - q)) >= min_dist for q in points):
            points.append(p)
    return points


# -- the scripted expert ----------------------------------------------------------------------
def expert_action(env: TabletopEnv) -> np.ndarray:
    """The privileged scripted expert: a function of the current state only (so it can label
    any state the learner visits, DAgger-style). Move to hover over the target, descend,
    close, lift, then (place) carry to hover over the plate, descend and open."""
    g = env.gripper
    a = np.zeros(ACTION_DIM)

    def go(target, grip: float):
        a[:3] = np.clip((np.asarray(target) - g) / STEP_M, -1.0, 1.0)
        a[6] = grip
        return a

    if env.held != env.target:
        if env.closed:                               # closed on nothing / the wrong block
            return go((g[0], g[1], max(g[2], HOVER_Z)), -1.0)
        p = env.block_pos(env.target)
        top = p[2] + HALF
        if np.hypot(*(p[:2] - g[:2])) > 0.006:
            z = HOVER_Z if np.hypot(*(p[:2] - g[:2])) > 0.03 else g[2]
            return go((p[0], p[1], max(z, top + 0.02)), -1.0)
        if g[2] - top > GRASP_Z * 0.5:
            return go((p[0], p[1], top), -1.0)
        return go(g, 1.0)                            # close
    if env.task == 'lift':
        return go((g[0], g[1], HOVER_Z), 1.0)
    q = env.plates[env.plate]
    if np.hypot(*(q - g[:2])) > 0.008:
        z = HOVER_Z if np.hypot(*(q - g[:2])) > 0.03 else g[2]
        return go((q[0], q[1], z), 1.0)
    if g[2] > 2 * HALF + 0.012:
        return go((q[0], q[1], 2 * HALF + 0.005), 1.0)
    return go(g, -1.0)                               # open over the plate


# -- the camera -------------------------------------------------------------------------------
def render_topdown(env: TabletopEnv, size: int = IMAGE_SIZE) -> np.ndarray:
    """The gripper-mounted camera (see the module doc): a pinhole looking straight down from
    CAMERA_ABOVE over the fingertips, drawn with numpy. Objects are drawn farthest first; the
    scale of each follows its depth below the camera, so the table grows as the gripper
    descends; the fingers (apart when open) sit at the bottom centre of the image."""
    img = np.empty((size, size, 3), np.uint8)
    img[:] = _TABLE
    g = env.gripper
    cam_z = g[2] + CAMERA_ABOVE
    focal = size * FOCAL
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5

    def project(x, y, z):
        depth = max(cam_z - z, 0.01)
        k = focal / depth
        return size / 2 + (x - g[0]) * k, size / 2 - (y - g[1]) * k, k

    def square(x, y, z, half_m, color):
        u, v, k = project(x, y, z)
        h = max(half_m * k, 0.6)
        mask = (np.abs(xx - u) <= h) & (np.abs(yy - v) <= h)
        img[mask] = color

    def disc(x, y, z, r_m, color):
        u, v, k = project(x, y, z)
        mask = (xx - u) ** 2 + (yy - v) ** 2 <= max(r_m * k, 0.6) ** 2
        img[mask] = color

    for name, q in env.plates.items():
        disc(q[0], q[1], 0.0, PLATE_R, _RGB[name])
    for c in sorted(COLORS, key=lambda c: env.block_pos(c)[2]):
        p = env.block_pos(c)
        square(p[0], p[1], p[2] + HALF, HALF, _RGB[c])      # the top face
    spread = 0.008 if env.closed else 0.022
    for side in (-1, 1):                                     # the fingertips
        u = size / 2 + side * spread * focal / CAMERA_ABOVE
        h = 0.005 * focal / CAMERA_ABOVE
        mask = (np.abs(xx - u) <= h) & (np.abs(yy - size / 2) <= 2 * h)
        img[mask] = _GRIPPER
    return img
