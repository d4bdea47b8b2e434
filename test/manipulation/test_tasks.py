"""The table-top tasks: physics, grasping, the experts and the camera."""
import numpy as np
import pytest

from qail_ros.errors import ParameterError
from qail_ros.manipulation.tasks import (ACTION_DIM, COLORS, HALF, TabletopEnv,
                                         expert_action)

pytest.importorskip('mujoco')


def run_expert(env):
    while not env.done:
        env.step(expert_action(env))
    return env


@pytest.mark.parametrize('task', ['lift', 'place'])
def test_expert_solves_every_seed(task):
    env = TabletopEnv(task, 0)
    for seed in range(6):
        env.reset(seed)
        run_expert(env)
        assert env.success, (task, seed, env.instruction)
        assert env.steps < env.max_steps


def test_reset_is_deterministic_and_seeds_differ():
    a, b = TabletopEnv('place', 3), TabletopEnv('place', 3)
    assert np.array_equal(a.observe().image, b.observe().image)
    assert a.instruction == b.instruction
    c = TabletopEnv('place', 4)
    assert not np.array_equal(a.observe().image, c.observe().image)


def test_instruction_names_target_and_plate():
    env = TabletopEnv('place', 1)
    assert env.target in env.instruction and env.plate in env.instruction
    lift = TabletopEnv('lift', 1)
    assert lift.instruction == f'pick up the {lift.target} block'


def test_closing_over_nothing_grasps_nothing_and_block_falls_when_released():
    env = TabletopEnv('lift', 2)
    env.gripper[:] = (0.15, 0.15, 0.0)          # a corner: no block there
    action = np.zeros(ACTION_DIM)
    action[6] = 1.0
    env.step(action)
    assert env.closed and env.held is None
    # pick the target with the expert, lift it, then open: it falls back to the table
    env = TabletopEnv('place', 2)
    while env.held != env.target:
        env.step(expert_action(env))
    for _ in range(4):
        env.step(expert_action(env))
    assert env.block_pos(env.target)[2] > 0.05
    open_ = np.zeros(ACTION_DIM)
    open_[6] = -1.0
    for _ in range(10):
        env.step(open_)
    assert env.held is None and env.block_pos(env.target)[2] < 0.03
    assert not env.success                     # not on the plate


def test_wrong_block_is_not_success():
    env = TabletopEnv('lift', 5)
    other = next(c for c in COLORS if c != env.target)
    p = env.block_pos(other)
    env.gripper[:] = (p[0], p[1], p[2] + HALF)     # fingertips on the block's top
    close = np.zeros(ACTION_DIM)
    close[6] = 1.0
    env.step(close)
    assert env.held == other
    up = close.copy()
    up[2] = 1.0
    for _ in range(8):
        env.step(up)
    assert not env.success


def test_camera_shows_the_gripper_state():
    env = TabletopEnv('lift', 0)
    opened = env.observe().image
    action = np.zeros(ACTION_DIM)
    action[6] = 1.0
    closed = env.step(action)[0].image
    assert opened.shape == (48, 48, 3) and opened.dtype == np.uint8
    assert not np.array_equal(opened, closed)


def test_bad_inputs_are_refused():
    with pytest.raises(ParameterError, match='choose one of'):
        TabletopEnv('stack')
    env = TabletopEnv('lift', 0)
    with pytest.raises(ParameterError, match='7 finite numbers'):
        env.step(np.zeros(3))
    with pytest.raises(ParameterError, match='finite'):
        env.step(np.full(ACTION_DIM, np.nan))


def test_state_has_scene_and_instruction_relative_targets():
    from qail_ros.manipulation.tasks import SCENE_DIM, STATE_DIM
    env = TabletopEnv('place', 7)
    s = env.state()
    assert s.shape == (STATE_DIM,)
    rel_block = s[SCENE_DIM:SCENE_DIM + 3] / 10
    expected = env.block_pos(env.target) + (0, 0, HALF) - env.gripper
    np.testing.assert_allclose(rel_block, expected, atol=1e-9)
    np.testing.assert_allclose(s[SCENE_DIM + 3:] / 10, env.plates[env.plate] - env.gripper[:2])
