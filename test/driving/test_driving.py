"""The highway-env driving benchmark: determinism, camera, expert vs baselines, commands, metrics.

Tiny on purpose (2 shared CPU cores): a few short episodes, small images, no timing asserts.
"""
import numpy as np
import pytest

pytest.importorskip('highway_env', reason='the driving benchmark needs highway-env '
                    '(pip install highway-env==1.12.1)')

from qail_ros import driving  # noqa: E402
from qail_ros.driving import env as denv  # noqa: E402


def _drive(env, steps):
    states = []
    for _ in range(steps):
        obs, done, _ = env.step(env.expert_action())
        states.append((*env.ego.position, env.ego.speed, obs.command))
        if done:
            break
    return np.asarray(states)


def test_same_seed_same_episode_other_seed_other_traffic():
    a = driving.make_env('regular', seed=3, town='highway', image_size=(64, 32))
    b = driving.make_env('regular', seed=3, town='highway', image_size=(64, 32))
    c = driving.make_env('regular', seed=4, town='highway', image_size=(64, 32), render=False)
    try:
        oa, ob = a.reset(), b.reset()
        c.reset()
        np.testing.assert_array_equal(oa.image, ob.image)
        np.testing.assert_array_equal(_drive(a, 5), _drive(b, 5))
        np.testing.assert_array_equal(a.render(), b.render())
        pos = lambda e: np.asarray([v.position for v in e._env.road.vehicles[1:4]])  # noqa: E731
        assert not np.allclose(pos(a), pos(c))
    finally:
        for e in (a, b, c):
            e.close()


def test_camera_is_rgb_of_the_asked_size_and_not_black():
    env = driving.make_env('regular', seed=0, town='merge', image_size=(120, 48))
    try:
        obs = env.reset()
    finally:
        env.close()
    img = obs.image
    assert img.shape == (48, 120, 3) and img.dtype == np.uint8
    assert img.std() > 10, 'all-black/flat frame: SDL_VIDEODRIVER must be offscreen'
    colours = np.unique(img.reshape(-1, 3), axis=0)
    assert len(colours) > 3
    assert np.any(img[..., 1].astype(int) - img[..., 0] > 40), 'the green ego car is missing'


def test_expert_completes_a_short_route_where_zero_and_random_fail():
    kwargs = dict(density='empty', town='roundabout', routes=2, seed=0)
    expert = driving.evaluate(driving.ExpertPolicy(), **kwargs)
    zero = driving.evaluate(driving.zero_policy, **kwargs)
    rand = driving.evaluate(driving.random_policy(0), **kwargs)
    assert expert['success_rate'] == 1.0 and expert['route_completion'] == 1.0
    assert zero['success_rate'] == 0.0 and rand['success_rate'] == 0.0
    assert expert['route_completion'] > max(zero['route_completion'], rand['route_completion'])


def test_roundabout_turn_command_matches_the_exit():
    want = {'exr': denv.RIGHT, 'nxr': denv.STRAIGHT, 'wxr': denv.LEFT}
    seen = set()
    for seed in range(6):
        env = driving.make_env('empty', seed=seed, town='roundabout', render=False)
        env.reset()
        exit_node = env.route_edges[-1][1]
        assert env.turn_command == want[exit_node]
        seen.add(exit_node)
        env.close()
    assert len(seen) >= 2, 'the seed should pick different exits'


def test_demonstrations_shapes_and_labels():
    demo = driving.collect_demonstrations(driving.ExpertPolicy(), 'empty', 'highway', episodes=1,
                                          seed=1000, image_size=(48, 24))
    n = len(demo['speed'])
    assert n > 10 and demo['image'].shape == (n, 24, 48, 3) and demo['image'].dtype == np.uint8
    assert demo['act'].shape == (n, 2) and demo['act'].dtype == np.float32
    assert np.all(np.abs(demo['act']) <= 1.0)
    assert set(demo['command'].tolist()) <= set(denv.COMMANDS)
    assert demo['episode'].tolist() == [0] * n and demo['metrics']['success_rate'] == 1.0
    assert demo['speed'].min() > 15.0   # highway start at ~25 m/s, empty road: no braking


def test_metrics_on_a_hand_made_log():
    log = [{'success': True, 'collision': False, 'route_completion': 1.0},
           {'success': False, 'collision': True, 'route_completion': 0.4},
           {'success': False, 'timeout': True, 'route_completion': 0.2},
           {'success': False, 'off_road': True, 'route_completion': 0.0}]
    m = driving.episode_metrics(log)
    assert m['success_rate'] == 0.25 and m['collision_rate'] == 0.25
    assert m['timeout_rate'] == 0.25 and m['off_road_rate'] == 0.25
    assert m['route_completion'] == pytest.approx(0.4) and m['episodes'] == 4
    with pytest.raises(driving.DrivingError, match='no episodes'):
        driving.episode_metrics([])


def test_control_conversions_and_brakes_never_reverse():
    assert driving.action_to_control([0.5, -0.2]) == (0.5, -0.2, 0.0)
    assert driving.action_to_control([-0.7, 2.0]) == (0.0, 1.0, 0.7)
    np.testing.assert_allclose(driving.control_to_action(0.0, 0.3, 0.6), [-0.6, 0.3])
    env = driving.make_env('empty', seed=0, town='highway', render=False)
    try:
        env.reset()
        for _ in range(40):
            obs, _, info = env.step([-1.0, 0.0])
        assert obs.speed == 0.0 and not info['collision']
    finally:
        env.close()


def test_bad_arguments_say_what_is_known():
    with pytest.raises(driving.DrivingError, match='known: highway, merge, roundabout'):
        driving.make_env('regular', town='Town01')
    with pytest.raises(driving.DrivingError, match='empty, regular, dense'):
        driving.make_env('busy')
