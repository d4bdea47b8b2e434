"""Clone a task's shipped expert into the FP MLPPolicy and ship it with its manifest.

  nice -n 10 python scripts/physics/train_bc.py --task cartpole-balance

Demonstrations come from the expert (models/physics/<task>/expert.safetensors): --episodes clean
episodes plus --noise-episodes episodes where Gaussian noise (--noise) perturbs the executed
action while the expert's clean action is the label (DART-style), so the student also sees how
to recover from small errors. Demonstrations use environment seeds from --demo-seed (1000) on;
evaluation uses seeds 0..--eval-episodes-1, like qail_ros.physics.evaluate's default. Writes
fp_policy.safetensors and manifest.json (dims, architecture, training, measured returns of the
expert, the FP policy and a random policy).
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from qail_ros import physics
from qail_ros.physics.bc import train_bc
from qail_ros.physics.models import load_expert, task_dir
from qail_ros.physics.policy import load_policy, save_policy


def stats(rets) -> dict:
    return {'mean': round(float(np.mean(rets)), 2), 'std': round(float(np.std(rets)), 2),
            'episodes': len(rets), 'returns': [round(float(r), 2) for r in rets]}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--task', required=True, choices=list(physics.TASKS))
    p.add_argument('--episodes', type=int, default=20)
    p.add_argument('--noise-episodes', type=int, default=20)
    p.add_argument('--noise', type=float, default=0.2)
    p.add_argument('--demo-seed', type=int, default=1000)
    p.add_argument('--hidden', type=int, default=256)
    p.add_argument('--layers', type=int, default=3)
    p.add_argument('--steps', type=int, default=20000)
    p.add_argument('--lr', type=float, default=1e-3)
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--eval-episodes', type=int, default=10)
    args = p.parse_args()
    torch.set_num_threads(1)
    t0 = time.time()

    expert = load_expert(args.task)
    parts = [physics.collect_demonstrations(expert, args.task, args.episodes, args.demo_seed)]
    if args.noise_episodes:
        parts.append(physics.collect_demonstrations(
            expert, args.task, args.noise_episodes, args.demo_seed + args.episodes,
            action_noise=args.noise))
    obs = np.concatenate([d['obs'] for d in parts])
    act = np.concatenate([d['act'] for d in parts])
    demo_returns = np.concatenate([d['returns'] for d in parts])
    print(f'{args.task}: {len(obs)} demonstration pairs, demo returns clean '
          f'{np.mean(parts[0]["returns"]):.1f}'
          + (f', noisy {np.mean(parts[1]["returns"]):.1f}' if len(parts) > 1 else ''),
          flush=True)

    policy, summary = train_bc(obs, act, hidden=args.hidden, layers=args.layers,
                               steps=args.steps, lr=args.lr, seed=args.seed,
                               log=lambda s: print(s, flush=True))
    out = task_dir(args.task) / 'fp_policy.safetensors'
    meta = {'task': args.task, 'trained_by': 'behaviour cloning (MSE) on expert demonstrations'}
    save_policy(policy, out, meta)
    policy = load_policy(out)  # measure exactly what ships

    fp = physics.evaluate(policy, args.task, args.eval_episodes, seed=0)
    ex = physics.evaluate(expert, args.task, args.eval_episodes, seed=0)
    env = physics.make_env(args.task)
    rnd = physics.evaluate(physics.random_policy(env.act_dim, seed=0), args.task,
                           args.eval_episodes, seed=0)
    manifest = {
        'task': args.task, 'domain_task': list(physics.TASKS[args.task]),
        'obs_dim': env.obs_dim, 'act_dim': env.act_dim, 'episode_steps': env.max_steps,
        'fp_policy': {
            'file': 'fp_policy.safetensors', 'class': 'qail_ros.physics.MLPPolicy',
            'architecture': policy.config | {
                'activation': 'relu', 'output': 'tanh',
                'normalization': 'obs_mean/obs_std buffers, (obs - mean) / std'},
            'storage_dtype': 'float32',
            'training': summary | {
                'method': 'behaviour cloning, MSE on actions, AdamW + cosine decay',
                'demo_episodes_clean': args.episodes, 'demo_episodes_noisy':
                args.noise_episodes, 'demo_action_noise_std': args.noise,
                'demo_seeds_from': args.demo_seed, 'demo_return_mean':
                round(float(demo_returns.mean()), 2), 'seed': args.seed},
            'return': stats(fp)},
        'expert': {'file': 'expert.safetensors', 'kind': expert.__class__.__name__,
                   'how': getattr(expert, 'meta', {}), 'return': stats(ex)},
        'random_policy': {'return': stats(rnd)},
        'evaluation': {'seeds': f'0..{args.eval_episodes - 1}', 'function':
                       'qail_ros.physics.evaluate(policy, task, episodes, seed=0)'},
        'paper_fp_return': {'cartpole-balance': 652, 'walker-stand': 692, 'hopper-stand': 645,
                            'cheetah-run': 567, 'finger-spin': 684, 'humanoid-stand': 565,
                            'humanoid-walk': 550}.get(args.task),
        'command': f'python scripts/physics/train_bc.py --task {args.task} --episodes '
                   f'{args.episodes} --noise-episodes {args.noise_episodes} --noise {args.noise} '
                   f'--hidden {args.hidden} --layers {args.layers} --steps {args.steps} '
                   f'--lr {args.lr} --seed {args.seed}',
        'minutes': round((time.time() - t0) / 60, 1),
    }
    (task_dir(args.task) / 'manifest.json').write_text(json.dumps(manifest, indent=2) + '\n')
    print(json.dumps({'task': args.task, 'expert': stats(ex)['mean'], 'fp': stats(fp)['mean'],
                      'fp_std': stats(fp)['std'], 'random': stats(rnd)['mean']}), flush=True)
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
