"""Our SAC (qail_ros.physics.sac) against stable-baselines3's SAC, same settings and budget.

  pip install stable-baselines3==2.9.2       # only this script needs it
  python scripts/physics/compare_sac.py --task gym:Pendulum-v1 --steps 6000 --json
  python scripts/physics/compare_sac.py --update-cost 100     # only the cost of one update

Both: 2 x 256 actor and twin critics, Adam lr 3e-4, batch 256, gamma 0.99, tau 0.005, learned
temperature (target entropy -act_dim), one gradient step per env step, --start-steps random
steps first, one torch thread, training env seed 10000 + seed. Each trained actor's
deterministic action is then evaluated with qail_ros.physics.evaluate on seeds 0..9. Prints the
wall time, updates per second and the returns; with --json one JSON object as the last line.
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch


def ours(task: str, steps: int, start: int, seed: int) -> tuple[object, float]:
    from qail_ros.physics.teacher import expert_settings, train_expert
    import tempfile
    with tempfile.TemporaryDirectory() as tmp:
        s = expert_settings(task, steps=steps, action_repeat=1, seed=seed, start_steps=start,
                            eval_every=steps, eval_episodes=1)
        t0 = time.perf_counter()
        train_expert(task, tmp, s, progress=False, log=None)
        seconds = time.perf_counter() - t0
        from qail_ros.physics.models import load_expert
        actor = load_expert(task, teacher=tmp)
    return actor, seconds


def sb3(task: str, steps: int, start: int, seed: int) -> tuple[object, float]:
    from stable_baselines3 import SAC
    from qail_ros.physics.tasks import make_env
    env = make_env(task, 10_000 + seed).env   # the raw Gymnasium env (bounds handled by SB3)
    model = SAC('MlpPolicy', env, learning_rate=3e-4, buffer_size=max(steps, 1000),
                learning_starts=start, batch_size=256, tau=0.005, gamma=0.99, train_freq=1,
                gradient_steps=1, ent_coef='auto', policy_kwargs={'net_arch': [256, 256]},
                seed=seed, device='cpu', verbose=0)
    t0 = time.perf_counter()
    model.learn(total_timesteps=steps)
    seconds = time.perf_counter() - t0

    def actor(obs: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return model.policy._predict(obs, deterministic=True)  # squashed, in [-1, 1]
    return actor, seconds


def update_cost(task: str, n: int, repeats: int = 3) -> dict[str, list[float]]:
    """ms per gradient update of each, interleaved (`repeats` x `n` updates), same batch 256
    and networks, on a replay buffer of random transitions."""
    from stable_baselines3 import SAC as SB3SAC

    from qail_ros.physics.sac import SAC, ReplayBuffer, SACConfig
    from qail_ros.physics.tasks import make_env
    env = make_env(task, 0)
    rng = np.random.default_rng(0)
    agent = SAC(env.obs_dim, env.act_dim, SACConfig())
    buf = ReplayBuffer(env.obs_dim, env.act_dim, 5000)
    for _ in range(5000):
        buf.add(rng.standard_normal(env.obs_dim), rng.uniform(-1, 1, env.act_dim), 0.0,
                rng.standard_normal(env.obs_dim), 1.0)
    model = SB3SAC('MlpPolicy', env.env, batch_size=256, learning_starts=0, buffer_size=5000,
                   policy_kwargs={'net_arch': [256, 256]}, device='cpu', verbose=0)
    model.learn(total_timesteps=300)   # fills its buffer
    out: dict[str, list[float]] = {'qail_ros': [], 'stable-baselines3': []}
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(n):
            agent.update(buf)
        out['qail_ros'].append(round(1e3 * (time.perf_counter() - t0) / n, 2))
        t0 = time.perf_counter()
        model.train(gradient_steps=n, batch_size=256)
        out['stable-baselines3'].append(round(1e3 * (time.perf_counter() - t0) / n, 2))
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--task', default='gym:Pendulum-v1',
                   help='a gym:ENV_ID task (SB3 trains on the raw Gymnasium env)')
    p.add_argument('--steps', type=int, default=6000)
    p.add_argument('--start-steps', type=int, default=1000)
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--episodes', type=int, default=10)
    p.add_argument('--update-cost', type=int, default=0, metavar='N',
                   help='only time N updates of each, three times interleaved (ms per update)')
    p.add_argument('--json', action='store_true')
    args = p.parse_args()
    torch.set_num_threads(1)
    if args.update_cost:
        ms = update_cost(args.task, args.update_cost)
        for name, v in ms.items():
            print(f'{name}: {", ".join(map(str, v))} ms per update')
        if args.json:
            print(json.dumps({'task': args.task, 'ms_per_update': ms}))
        return 0
    from qail_ros.physics.closed_loop import evaluate
    rows = {}
    for name, fn in (('qail_ros', ours), ('stable-baselines3', sb3)):
        torch.manual_seed(args.seed)
        actor, seconds = fn(args.task, args.steps, args.start_steps, args.seed)
        rets = evaluate(actor, args.task, args.episodes, seed=0)
        updates = args.steps - args.start_steps
        rows[name] = {'seconds': round(seconds, 1), 'updates_per_s': round(updates / seconds, 1),
                      'return_mean': round(float(np.mean(rets)), 1),
                      'return_std': round(float(np.std(rets)), 1)}
        print(f'{name}: {seconds:.0f} s ({updates / seconds:.1f} updates/s), return '
              f'{np.mean(rets):.1f} +- {np.std(rets):.1f}', flush=True)
    if args.json:
        print(json.dumps({'task': args.task, 'steps': args.steps, 'seed': args.seed,
                          'results': rows}))
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
