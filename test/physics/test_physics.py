"""qail_ros.physics: environments, policies, rollouts and the shipped models."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip('dm_control', reason='dm-control not installed (pip install mujoco==3.17.0 '
                                         'dm-control==1.0.50)')
torch = pytest.importorskip('torch')

from qail_ros import physics  # noqa: E402
from qail_ros.physics.tasks import UnknownTaskError  # noqa: E402

# (task, obs_dim, act_dim) from the dm_control suite's observation/action specs.
DIMS = [('cartpole-balance', 5, 1), ('walker-stand', 24, 6), ('hopper-stand', 15, 4),
        ('cheetah-run', 17, 6), ('finger-spin', 9, 2)]


def test_import_is_lean():
    code = ('import sys; from qail_ros import physics; physics.TASKS; '
            'assert "torch" not in sys.modules and "dm_control" not in sys.modules, '
            'sorted(m for m in sys.modules if m.startswith(("torch", "dm_control")))')
    subprocess.run([sys.executable, '-c', code], check=True)


@pytest.mark.parametrize('task,obs_dim,act_dim', DIMS)
def test_env_shapes_and_dtypes(task, obs_dim, act_dim):
    env = physics.make_env(task, seed=0)
    assert (env.obs_dim, env.act_dim, env.max_steps) == (obs_dim, act_dim, 1000)
    obs = env.reset()
    assert obs.shape == (obs_dim,) and obs.dtype == np.float32
    obs, reward, done = env.step(np.ones(act_dim) * 5.0)  # out of range: clipped, not an error
    assert obs.shape == (obs_dim,) and obs.dtype == np.float32
    assert 0.0 <= reward <= 1.0 and done is False


def test_env_determinism_and_seed_dependence():
    def trajectory(seed):
        env = physics.make_env('walker-stand', seed)
        obs = [env.reset()]
        act_rng = np.random.default_rng(123)
        for _ in range(50):
            obs.append(env.step(act_rng.uniform(-1, 1, env.act_dim))[0])
        return np.stack(obs)
    a, b, c = trajectory(3), trajectory(3), trajectory(4)
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a[0], c[0])


def test_unknown_task_names_the_choices():
    with pytest.raises(UnknownTaskError, match='walker-stand'):
        physics.make_env('walker-run-fast')


def test_mlp_policy_structure_and_range():
    policy = physics.MLPPolicy(9, 2, hidden=32, layers=3)
    linears = [m for m in policy.net if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(9, 32), (32, 32), (32, 32),
                                                                  (32, 2)]
    assert isinstance(policy.net[-1], torch.nn.Tanh)
    out = policy(torch.randn(7, 9) * 100)
    assert out.shape == (7, 2) and out.abs().max() <= 1.0


def test_policy_save_load_round_trip(tmp_path):
    policy = physics.MLPPolicy(5, 1, hidden=16, layers=3)
    policy.set_normalization(np.random.default_rng(0).normal(3.0, 2.0, (100, 5)))
    x = torch.randn(4, 5)
    path = physics.save_policy(policy, tmp_path / 'p.safetensors', meta={'note': 'x'})
    loaded = physics.load_policy(path)
    assert loaded.config == policy.config and loaded.meta == {'note': 'x'}
    assert not loaded.training
    torch.testing.assert_close(loaded.obs_mean, policy.obs_mean)
    torch.testing.assert_close(loaded(x), policy(x).detach())
    half = physics.load_policy(physics.save_policy(policy, tmp_path / 'h.safetensors',
                                                   dtype=torch.float16))
    torch.testing.assert_close(half(x), policy(x).detach(), atol=5e-3, rtol=0)


def test_rollout_records_pairs_episode_major():
    policy = physics.MLPPolicy(5, 1, hidden=8, layers=1)
    res = physics.rollout(policy, 'cartpole-balance', episodes=2, seed=0, max_steps=30)
    assert len(res.returns) == 2
    assert res.obs.shape == (60, 5) and res.act.shape == (60, 1) and res.obs.dtype == np.float32
    np.testing.assert_array_equal(res.episode, np.repeat([0, 1], 30))
    # The recorded first observation of each episode is that seed's reset state.
    np.testing.assert_array_equal(res.obs[30], physics.make_env('cartpole-balance', 1).reset())
    with torch.no_grad():
        np.testing.assert_allclose(res.act, policy(torch.from_numpy(res.obs)).numpy(), atol=1e-6)


def test_lqr_gain_is_stabilising_and_balances():
    from qail_ros.physics.lqr import CartpoleLQR
    lqr = CartpoleLQR.design()
    gain = lqr.gain.numpy().ravel()
    # Push the cart towards the side the pole leans to: all gains of one sign (u = -K s).
    assert np.all(gain < 0), gain
    assert lqr.closed_loop_eigenvalues().max() < 1.0
    rets = physics.evaluate(lqr, 'cartpole-balance', episodes=2, seed=0, max_steps=300)
    assert min(rets) > 295  # reward ~1 per step while upright and centred


def test_collect_demonstrations_is_deterministic():
    from qail_ros.physics.lqr import CartpoleLQR
    lqr = CartpoleLQR.design()
    a = physics.collect_demonstrations(lqr, 'cartpole-balance', episodes=1, seed=5,
                                       action_noise=0.3)
    b = physics.collect_demonstrations(lqr, 'cartpole-balance', episodes=1, seed=5,
                                       action_noise=0.3)
    assert set(a) == {'obs', 'act', 'episode', 'returns'}
    assert a['obs'].shape == (1000, 5) and a['act'].shape == (1000, 1)
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])
    # Labels are the expert's clean actions, not the noisy executed ones.
    with torch.no_grad():
        np.testing.assert_allclose(a['act'], lqr(torch.from_numpy(a['obs'])).numpy(), atol=1e-6)


def shipped(task):
    if task not in physics.shipped_tasks():
        pytest.skip(f'no shipped FP policy for {task} under models/physics/')


def test_shipped_cartpole_policy_beats_random():
    shipped('cartpole-balance')
    policy = physics.load_fp_policy('cartpole-balance')
    manifest = physics.load_manifest('cartpole-balance')
    assert policy.config['obs_dim'] == manifest['obs_dim'] == 5
    steps = 300
    fp = physics.evaluate(policy, 'cartpole-balance', episodes=3, seed=0, max_steps=steps)
    rnd = physics.evaluate(physics.random_policy(1, seed=0), 'cartpole-balance', episodes=3,
                           seed=0, max_steps=steps)
    assert min(fp) > 0.95 * steps and min(fp) > max(rnd) + 50, (fp, rnd)


@pytest.mark.parametrize('task', [t for t, _, _ in DIMS])
def test_shipped_models_load_with_consistent_manifest(task):
    shipped(task)
    manifest = physics.load_manifest(task)
    policy = physics.load_fp_policy(task)
    expert = physics.load_expert(task)
    obs = torch.from_numpy(physics.make_env(task).reset()[None])
    assert policy(obs).shape == expert(obs).shape == (1, manifest['act_dim'])
    assert manifest['fp_policy']['return']['episodes'] >= 10
    assert manifest['fp_policy']['return']['mean'] > manifest['random_policy']['return']['mean']


@pytest.mark.slow
@pytest.mark.parametrize('task', [t for t, _, _ in DIMS])
def test_shipped_policy_reproduces_manifest_return(task):
    """The per-episode returns in the manifest are what the shipped file gives (first 3 seeds).

    Batch size changes float summation order in the MLP, which chaotic tasks can amplify over
    1000 steps, hence a tolerance rather than equality.
    """
    shipped(task)
    recorded = physics.load_manifest(task)['fp_policy']['return']['returns'][:3]
    rets = physics.evaluate(physics.load_fp_policy(task), task, len(recorded), seed=0)
    assert np.mean(rets) == pytest.approx(np.mean(recorded), rel=0.05, abs=5.0)


def test_rollout_stays_the_function_after_its_module_is_imported():
    # A submodule named like a lazily exported function would replace it on the package.
    import qail_ros.physics.closed_loop  # noqa: F401
    assert callable(physics.rollout) and physics.rollout.__name__ == 'rollout'
