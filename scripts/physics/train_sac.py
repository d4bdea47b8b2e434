"""Train a SAC expert for one DeepMind Control task (run once; the actor ships as the expert).

Example (one core, in the background, logs and checkpoints outside the repo):
  nice -n 10 python scripts/physics/train_sac.py --task walker-stand --minutes 25 \
      --action-repeat 2 > /work/coord/physics_logs/sac_walker-stand.log 2>&1 &

Every --eval-every environment steps the deterministic actor is evaluated with
qail_ros.physics.evaluate (action repeat 1, the way the expert is used afterwards); the best
actor so far is written to models/physics/<task>/expert.safetensors, and the whole SAC state to
--ckpt-dir, so a stopped run loses little (--resume continues from it with an empty buffer).
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from qail_ros import physics
from qail_ros.physics.models import save_expert
from qail_ros.physics.sac import SAC, ReplayBuffer, SACConfig


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--task', required=True, choices=list(physics.TASKS))
    p.add_argument('--minutes', type=float, default=20.0, help='wall-clock budget')
    p.add_argument('--max-env-steps', type=int, default=3_000_000)
    p.add_argument('--action-repeat', type=int, default=2)
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--start-steps', type=int, default=5000, help='random agent steps first')
    p.add_argument('--eval-every', type=int, default=20000, help='environment steps')
    p.add_argument('--eval-episodes', type=int, default=5)
    p.add_argument('--target-return', type=float, default=None, help='stop when reached')
    p.add_argument('--hidden', type=int, default=256)
    p.add_argument('--lr', type=float, default=3e-4)
    p.add_argument('--batch', type=int, default=256)
    p.add_argument('--ckpt-dir', default='/work/coord/physics_logs/ckpt')
    p.add_argument('--resume', action='store_true')
    args = p.parse_args()

    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    t_start = time.time()
    env = physics.make_env(args.task, seed=10_000 + args.seed)  # eval uses seeds 0..; keep apart
    cfg = SACConfig(hidden=args.hidden, lr=args.lr, batch=args.batch)
    agent = SAC(env.obs_dim, env.act_dim, cfg)
    buf = ReplayBuffer(env.obs_dim, env.act_dim, 1_000_000, seed=args.seed)
    ckpt = Path(args.ckpt_dir) / f'sac_{args.task}.pt'
    ckpt.parent.mkdir(parents=True, exist_ok=True)
    env_steps, best, history = 0, -np.inf, []
    if args.resume and ckpt.is_file():
        state = torch.load(ckpt, weights_only=False)
        agent.load_state_dict(state['sac'])
        env_steps, best, history = state['env_steps'], state['best'], state['history']
        print(json.dumps({'resumed': str(ckpt), 'env_steps': env_steps, 'best': best}),
              flush=True)
    start_steps = args.start_steps if not args.resume else 1000

    def log(**kw):
        kw.update(env_steps=env_steps, minutes=round((time.time() - t_start) / 60, 2))
        print(json.dumps(kw), flush=True)

    obs = env.reset()
    ep_ret, agent_steps, next_eval = 0.0, 0, env_steps + args.eval_every
    ep_steps = 0
    while True:
        if agent_steps < start_steps:
            act = rng.uniform(-1, 1, env.act_dim).astype(np.float32)
        else:
            act = agent.act(obs, explore=True)
        rew, done = 0.0, False
        for _ in range(args.action_repeat):
            nxt, r, done = env.step(act)
            rew += r
            env_steps += 1
            ep_steps += 1
            if done:
                break
        # dm_control episodes end only by the time limit: bootstrap through it (notdone=1).
        buf.add(obs, act, rew, nxt, 1.0)
        obs = nxt
        ep_ret += rew
        agent_steps += 1
        if agent_steps >= start_steps:
            info = agent.update(buf)
        if done:
            losses = info if agent_steps >= start_steps else {}
            log(kind='train', ep_return=round(ep_ret, 1),
                **{k: round(v, 4) for k, v in losses.items()})
            obs, ep_ret, ep_steps = env.reset(), 0.0, 0
        if env_steps >= next_eval:
            next_eval += args.eval_every
            rets = physics.evaluate(agent.actor, args.task, args.eval_episodes, seed=0)
            mean = float(np.mean(rets))
            history.append((env_steps, mean))
            improved = mean > best
            if improved:
                best = mean
                save_expert(agent.actor, args.task, 'sac', meta={
                    'algorithm': 'SAC', 'env_steps': env_steps, 'action_repeat':
                    args.action_repeat, 'seed': args.seed, 'eval_return_mean': mean,
                    'eval_return_std': float(np.std(rets)), 'eval_episodes': args.eval_episodes,
                    'config': vars(cfg), 'minutes': round((time.time() - t_start) / 60, 1)})
            torch.save({'sac': agent.state_dict(), 'env_steps': env_steps, 'best': best,
                        'history': history}, ckpt)
            log(kind='eval', ret_mean=round(mean, 1), ret_std=round(float(np.std(rets)), 1),
                best=round(best, 1), saved=improved)
            if args.target_return is not None and best >= args.target_return:
                log(kind='done', reason='target reached')
                break
        if time.time() - t_start > args.minutes * 60 or env_steps >= args.max_env_steps:
            log(kind='done', reason='budget', best=round(best, 1))
            break
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
