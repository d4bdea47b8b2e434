"""Camera images of the physics tasks (qail_ros.physics.render)."""
import numpy as np
import pytest

pytest.importorskip('dm_control', reason='needs dm-control (pip install dm-control==1.0.50)')

from qail_ros.errors import ParameterError  # noqa: E402
from qail_ros.physics.render import SchematicCamera, make_camera  # noqa: E402
from qail_ros.physics.tasks import make_env  # noqa: E402


def test_schematic_shows_the_state_and_is_deterministic():
    env = make_env('cartpole-balance', 0)
    env.reset()
    cam = make_camera(env, 'schematic', 64, 48)
    assert isinstance(cam, SchematicCamera)
    first = cam.render()
    assert first.shape == (48, 64, 3) and first.dtype == np.uint8
    assert np.array_equal(first, cam.render())           # same state, same picture
    for _ in range(60):                                   # push: the pole swings
        env.step(np.ones(1))
    moved = cam.render()
    assert (moved != first).any(axis=-1).sum() > 20
    # sky, floor and at least two body colours are on screen
    assert len(np.unique(moved.reshape(-1, 3), axis=0)) >= 4


def test_walker_stays_in_view_as_it_moves():
    env = make_env('walker-stand', 0)
    env.reset()
    cam = make_camera(env, 'schematic', 80, 60, view_m=4.0)
    for _ in range(100):
        env.step(np.full(env.act_dim, 0.5))
    img = cam.render()
    body = (img != img[0, 0]).any(-1) & (img != img[-1, 0]).any(-1)
    cols = np.where(body.any(0))[0]
    assert cols.size and 5 < cols.mean() < 75


def test_unknown_or_unavailable_camera_is_a_clear_error(monkeypatch):
    env = make_env('cartpole-balance', 0)
    with pytest.raises(ParameterError, match='schematic, mujoco'):
        make_camera(env, 'fisheye')
    monkeypatch.setenv('MUJOCO_GL', 'disable')
    with pytest.raises(ParameterError, match='MUJOCO_GL=egl'):
        make_camera(env, 'mujoco')
    assert make_camera(env, 'auto').kind == 'schematic'
