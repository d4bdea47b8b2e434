"""Bring your own task, from the command line, at CI size: on a DeepMind Control task and a
Gymnasium task for which nothing ships, train-expert (tiny SAC budget) -> FP policy (BC) ->
bench physics --quick -> train (W4A4) -> export -> launch physics_drive."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip('dm_control', reason='needs dm-control (pip install dm-control==1.0.50)')
pytest.importorskip('gymnasium', reason='needs gymnasium (pip install gymnasium==1.4.0)')
torch = pytest.importorskip('torch')

from qail_ros import physics  # noqa: E402
from qail_ros.physics.tasks import UnknownTaskError, make_env, resolve_task  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
#: (task, camera the bridge falls back to): point_mass moves in x-y, which the schematic side
#: view does not draw; Pendulum-v1 has no MuJoCo model
NEW_TASKS = [('point_mass-easy', 'state'), ('gym:Pendulum-v1', 'state')]


def cli(*args, timeout=300) -> str:
    env = dict(os.environ, PYTHONUNBUFFERED='1', MUJOCO_GL='disable')
    proc = subprocess.run([sys.executable, '-m', 'qail_ros.cli', *map(str, args)], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=timeout)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    return out


def last_json(text: str) -> dict:
    return json.loads([line for line in text.splitlines() if line.startswith('{')][-1])


@pytest.mark.slow
@pytest.mark.parametrize('task,camera', NEW_TASKS)
def test_whole_path_on_a_new_task(tmp_path, task, camera):
    from qail_ros.engines import load_engine
    assert task not in physics.shipped_tasks()
    teacher = tmp_path / 'teacher'
    out = cli('train-expert', '--task', task, '--steps', 600, '--eval-every', 300,
              '--eval-episodes', 1, '--fp-steps', 100, '--fp-episodes', 1,
              '--fp-noise-episodes', 1, '--fp-eval-episodes', 2, '--no-progress', '--json',
              '-o', teacher)
    assert re.search(r'1/2 SAC expert .* expected [\d.]+ (s|min)', out)
    assert re.search(r'2/2 FP MLP .* expected [\d.]+ (s|min)', out)
    res = last_json(out)
    assert res['task'] == task and res['expert']['env_steps'] == 600
    manifest = json.loads((teacher / 'manifest.json').read_text())
    env = make_env(task)
    assert (manifest['task'], manifest['obs_dim'], manifest['act_dim'],
            manifest['episode_steps']) == (task, env.obs_dim, env.act_dim, env.max_steps)
    assert (teacher / 'checkpoint' / 'sac.pt').is_file()
    # --resume continues the run from its checkpoint (replay buffer included)
    out = cli('train-expert', '-o', teacher, '--resume', '--steps', 900, '--no-fp',
              '--no-progress', '--json')
    assert last_json(out)['expert']['env_steps'] == 900

    bench = last_json(cli('bench', 'physics', '--teacher', teacher, '--quick', '--episodes', 1,
                          '--methods', 'fp,ptq_rtn,qail_qbc', '--out', tmp_path / 'bench',
                          '--no-progress', '--json'))
    r = bench['results'][task]
    assert {'fp', 'ptq_rtn', 'qail_qbc'} <= set(r)
    assert r['fp']['mean'] == pytest.approx(manifest['fp_policy']['return']['returns'][0],
                                            abs=0.01)
    assert bench['runs'][f'{task} w4a4']['teacher'] == str(teacher)

    cli('train', '--teacher', teacher, '--steps', 30, '--expert-episodes', 1, '--fp-episodes',
        1, '--onpolicy-every', 15, '--onpolicy-max-steps', 50, '--eval-episodes', 1,
        '--no-progress', '-o', tmp_path / 'student')
    cli('export', tmp_path / 'student', '-o', tmp_path / 'engines', '--name', 'w4a4')
    cli('export', 'fp', '--teacher', teacher, '-o', tmp_path / 'engines', '--name', 'fp32')
    engine = load_engine(tmp_path / 'engines' / 'w4a4.safetensors')
    assert engine.precision == 'w4a4' and engine.manifest.details['task'] == task

    drive = cli('launch', 'physics_drive', '--composed', f'task:={task}',
                f'engine:={tmp_path / "engines" / "w4a4.safetensors"}', 'episodes:=1',
                'max_steps:=40', 'rate_hz:=2000.0', '--duration', 120)
    assert f'{camera} camera' in drive
    returns = [float(x) for x in re.findall(r'episode 1 \(seed 0\): return (-?[\d.]+)', drive)]
    assert len(returns) == 1
    student, _ = __import__('qail_ros.physics.qail_tasks', fromlist=['x']).load_any_policy(
        tmp_path / 'student')
    offline = physics.rollout(student, task, 1, 0, max_steps=40, record=False).returns
    assert returns[0] == pytest.approx(offline[0], abs=0.05)


def test_task_names_of_every_kind():
    assert resolve_task('walker-stand').kind == 'dm_control'
    assert resolve_task('ball_in_cup-catch').domain == 'ball_in_cup'
    assert resolve_task('gym:Pendulum-v1').kind == 'gym'
    spec = resolve_task('my_pkg.envs:make_env')
    assert (spec.kind, spec.domain, spec.task) == ('module', 'my_pkg.envs', 'make_env')
    with pytest.raises(UnknownTaskError, match='Pendulum-v1'):
        resolve_task('gym:Pendulum-v9')
    with pytest.raises(UnknownTaskError, match='domain-task'):
        resolve_task('cartpole-upside_down')
    with pytest.raises(UnknownTaskError, match='cannot import module'):
        make_env('no_such_module_qail:make')


def test_gym_env_flattening_bounds_and_episode_length():
    env = make_env('gym:Pendulum-v1', seed=3)
    assert (env.obs_dim, env.act_dim, env.max_steps) == (3, 1, 200)
    first = env.reset()
    assert first.dtype == np.float32 and first.shape == (3,)
    # [-1, 1] maps onto the env's torque bounds [-2, 2]; out of range is clipped
    env.step(np.array([1.0]))
    assert env.env.unwrapped.last_u == pytest.approx(2.0)
    env.step(np.array([-7.0]))
    assert env.env.unwrapped.last_u == pytest.approx(-2.0)
    again = make_env('gym:Pendulum-v1', seed=3).reset()
    np.testing.assert_array_equal(first, again)
    steps, done = 2, False
    while not done:
        _, _, done = env.step(np.zeros(1))
        steps += 1
    assert steps == 200


def _short_env(seed=0):
    """A module:factory env whose episodes end by termination after 5 + seed steps."""
    import gymnasium as gym

    class Short(gym.Env):
        observation_space = gym.spaces.Box(-np.inf, np.inf, (2, 2), np.float64)
        action_space = gym.spaces.Box(0.0, 4.0, (1,), np.float64)

        def reset(self, *, seed=None, options=None):
            super().reset(seed=seed)
            self.t = 0
            return np.zeros((2, 2)), {}

        def step(self, action):
            self.t += 1
            obs = np.full((2, 2), float(action[0]))
            return obs, 1.0, self.t >= 5 + seed, False, {}
    return Short()


def test_module_factory_and_early_termination(monkeypatch):
    import types
    mod = types.ModuleType('qail_test_short_env')
    mod.make = _short_env
    monkeypatch.setitem(sys.modules, 'qail_test_short_env', mod)
    env = make_env('qail_test_short_env:make', seed=1)
    assert (env.obs_dim, env.act_dim, env.max_steps) == (4, 1, 1000)
    obs, _, _ = env.step(np.array([0.0])) if env.reset() is not None else (None, 0, 0)
    np.testing.assert_array_equal(obs, np.full(4, 2.0, np.float32))   # [-1, 1] -> [0, 4]
    res = physics.rollout(lambda o: torch.zeros(o.shape[0], 1), 'qail_test_short_env:make',
                          episodes=3, seed=0)
    # episode i lasts 5 + i steps (its seed); each stops on its own termination
    assert res.returns == [5.0, 6.0, 7.0]
    assert np.bincount(res.episode).tolist() == [5, 6, 7]
    assert env.terminated is False
    for _ in range(5):
        env.step(np.array([0.0]))
    assert env.terminated is True


def test_teacher_directory_names_its_task_before_the_fp_policy_exists(tmp_path):
    from qail_ros.physics.models import MissingModelError, save_expert, teacher_task
    from qail_ros.physics.sac import SACActor
    with pytest.raises(MissingModelError, match='names no task'):
        teacher_task(tmp_path)
    save_expert(SACActor(3, 1, hidden=8), 'gym:Pendulum-v1', 'sac',
                path=tmp_path / 'expert.safetensors')
    assert teacher_task(tmp_path) == 'gym:Pendulum-v1'
    with pytest.raises(MissingModelError, match='train-expert'):
        physics.load_fp_policy(None, tmp_path)


def test_qail_data_tops_up_short_episodes_to_min_states(tmp_path):
    from qail_ros.physics.models import save_expert
    from qail_ros.physics.sac import SACActor
    from qail_ros.physics.qail_tasks import build_qail_data
    task = 'gym:Pendulum-v1'                                   # 200-step episodes
    save_expert(SACActor(3, 1, hidden=8), task, 'sac', path=tmp_path / 'expert.safetensors')
    physics.save_policy(physics.MLPPolicy(3, 1, hidden=8), tmp_path / 'fp_policy.safetensors',
                        {'task': task})
    plain = build_qail_data(task, expert_episodes=1, fp_episodes=1, teacher_dir=tmp_path)
    assert plain.counts() == {'expert': 200, 'fp': 200, 'student': 0}
    topped = build_qail_data(task, expert_episodes=1, fp_episodes=1, teacher_dir=tmp_path,
                             min_states=500)
    assert topped.counts() == {'expert': 600, 'fp': 600, 'student': 0}
