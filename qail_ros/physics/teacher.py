"""Teachers for any task: a SAC expert, then the FP MLP cloned from it, into a directory.

    train_expert('cartpole-swingup', 'runs/teacher', minutes=20)   # DIR/expert.safetensors
    train_fp('runs/teacher')                                       # DIR/fp_policy.safetensors

`qail-ros train-expert` and `qail-ros train-fp` call these. The directory has the layout of the
shipped models/physics/<task>/ (expert.safetensors, fp_policy.safetensors, manifest.json), so
every command takes it as `--teacher DIR`; SAC's own state (networks, optimisers, replay
buffer, random generators) is checkpointed under DIR/checkpoint/ at every evaluation, so
`--resume` continues a stopped run where it was. Nothing is written anywhere else.

Conventions (docs/physics.md): evaluation uses environment seeds 0.., demonstrations 1000..,
SAC's own training environment 10000 + seed.
"""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from qail_ros.errors import ParameterError

__all__ = ['ExpertSettings', 'expert_settings', 'estimate_expert_seconds', 'train_expert',
           'train_fp', 'estimate_fp_seconds', 'returns_stats', 'fmt_seconds']

CHECKPOINT = 'checkpoint/sac.pt'
LOG = 'expert_log.jsonl'

log = logging.getLogger(__name__)
#: the paper's FP returns (Table 7), recorded in the manifest where the task is one of them
PAPER_FP = {'cartpole-balance': 652, 'walker-stand': 692, 'hopper-stand': 645,
            'cheetah-run': 567, 'finger-spin': 684, 'humanoid-stand': 565, 'humanoid-walk': 550}


def fmt_seconds(seconds: float) -> str:
    seconds = max(0.0, float(seconds))
    if seconds < 90:
        return f'{seconds:.0f} s'
    if seconds < 5400:
        return f'{seconds / 60:.1f} min'
    return f'{seconds / 3600:.1f} h'


def returns_stats(rets) -> dict[str, Any]:
    return {'mean': round(float(np.mean(rets)), 2), 'std': round(float(np.std(rets)), 2),
            'episodes': len(rets), 'returns': [round(float(r), 2) for r in rets]}


class ExpertSettings(dict):
    """The resolved SAC settings of a run (a dict, stored in the checkpoint and the manifest)."""


def expert_settings(task: str, *, minutes: float | None = None, steps: int | None = None,
                    action_repeat: int | None = None, seed: int = 0,
                    start_steps: int | None = None, eval_every: int | None = None,
                    eval_episodes: int = 5, target_return: float | None = None,
                    hidden: int = 256, lr: float = 3e-4, batch: int = 256,
                    episode_steps: int | None = None, kind: str | None = None) -> ExpertSettings:
    """Defaults that work unattended on a new task (see docs/physics.md): with neither budget
    30 minutes; action repeat 2 on DeepMind Control, 1 elsewhere; 5000 random env steps first
    (a tenth of a small --steps budget); an evaluation every ~10 episodes or tenth of the
    budget."""
    from qail_ros.physics.tasks import make_env
    if minutes is None and steps is None:
        minutes = 30.0
    if (minutes is not None and minutes <= 0) or (steps is not None and steps < 1):
        raise ParameterError('--minutes and --steps must be > 0')
    if episode_steps is None or kind is None:
        env = make_env(task, 0)
        episode_steps, kind = env.max_steps, env.spec.kind
    ar = action_repeat if action_repeat else (2 if kind == 'dm_control' else 1)
    if ar < 1:
        raise ParameterError('--action-repeat must be >= 1')
    if start_steps is None:
        start_steps = 5000 if steps is None else max(ar * 10, min(5000, steps // 10))
    if eval_every is None:
        eval_every = max(2 * episode_steps, min(10 * episode_steps, 20000))
        if steps is not None:
            eval_every = max(min(eval_every, steps // 10), min(episode_steps, steps))
    return ExpertSettings(task=task, minutes=minutes, steps=steps, action_repeat=ar, seed=seed,
                          start_steps=int(start_steps), eval_every=int(eval_every),
                          eval_episodes=int(eval_episodes), target_return=target_return,
                          hidden=hidden, lr=lr, batch=batch, episode_steps=int(episode_steps))


def _measure(task: str, s: dict[str, Any]) -> tuple[float, float]:
    """(seconds per env step, seconds per SAC update), measured for a second or two."""
    import torch

    from qail_ros.physics.sac import SAC, ReplayBuffer, SACConfig
    from qail_ros.physics.tasks import env_step_seconds, make_env
    env = make_env(task, 0)
    env_s = env_step_seconds(env, budget_s=1.0)
    rng = np.random.default_rng(0)
    agent = SAC(env.obs_dim, env.act_dim, SACConfig(hidden=s['hidden'], batch=s['batch']))
    buf = ReplayBuffer(env.obs_dim, env.act_dim, 512)
    for _ in range(512):
        buf.add(rng.standard_normal(env.obs_dim), rng.uniform(-1, 1, env.act_dim), 0.0,
                rng.standard_normal(env.obs_dim), 1.0)
    with torch.random.fork_rng():
        agent.update(buf)
        t0, n = time.perf_counter(), 0
        while n < 40 and time.perf_counter() - t0 < 1.0:
            agent.update(buf)
            n += 1
    return env_s, (time.perf_counter() - t0) / n


def estimate_expert_seconds(task: str, s: dict[str, Any],
                            measured: tuple[float, float] | None = None) -> float:
    """Expected wall time of a run with settings `s` on this machine now (a short measurement
    of one env step and one SAC update; the --minutes budget caps it)."""
    env_s, upd_s = measured or _measure(task, s)
    steps = s['steps'] if s['steps'] is not None else 10 ** 9
    agent_steps = steps / s['action_repeat']
    train = agent_steps * (upd_s + s['action_repeat'] * env_s) * 1.15  # + acting, buffer
    evals = (steps / s['eval_every']) * s['eval_episodes'] * s['episode_steps'] * env_s * 1.2
    total = train + evals
    if s['minutes'] is not None:
        total = min(total, s['minutes'] * 60 + evals / max(1.0, steps / s['eval_every']))
    return total


def _save_checkpoint(path: Path, agent, buf, state: dict[str, Any]) -> None:
    import torch
    path.parent.mkdir(parents=True, exist_ok=True)
    n = buf.size
    data = {'sac': agent.state_dict(), 'state': state,
            'buffer': {'obs': buf.obs[:n].copy(), 'act': buf.act[:n].copy(),
                       'rew': buf.rew[:n].copy(), 'nxt': buf.nxt[:n].copy(),
                       'notdone': buf.notdone[:n].copy(), 'ptr': buf.ptr,
                       'rng': buf.rng.bit_generator.state},
            'torch_rng': torch.get_rng_state()}
    tmp = path.with_suffix('.tmp')
    torch.save(data, tmp)
    tmp.replace(path)


def _load_checkpoint(path: Path, agent, buf) -> dict[str, Any]:
    import torch
    data = torch.load(path, weights_only=False)
    agent.load_state_dict(data['sac'])
    b = data['buffer']
    n = len(b['obs'])
    if n > buf.capacity:
        raise ParameterError(f'{path} holds {n} transitions, more than this run keeps '
                             f'({buf.capacity}): resume with the same or a larger --steps')
    for key in ('obs', 'act', 'rew', 'nxt', 'notdone'):
        getattr(buf, key)[:n] = b[key]
    buf.size, buf.ptr = n, int(b['ptr']) % buf.capacity
    buf.rng.bit_generator.state = b['rng']
    torch.set_rng_state(data['torch_rng'])
    return data['state']


def train_expert(task: str, out: str | Path, settings: dict[str, Any] | None = None, *,
                 resume: bool = False, progress: bool = True, **kwargs) -> dict[str, Any]:
    """Train a SAC expert for `task` into `out` (module doc); returns the run summary.

    `settings` from expert_settings (or its keyword arguments in `kwargs`). Every eval_every env
    steps the deterministic actor is evaluated (action repeat 1, the way the expert is used
    afterwards) on seeds 0..eval_episodes-1; the best so far is DIR/expert.safetensors.
    """
    import torch

    from qail_ros.physics.closed_loop import evaluate
    from qail_ros.physics.models import save_expert
    from qail_ros.physics.sac import SAC, ReplayBuffer, SACConfig
    from qail_ros.physics.tasks import make_env

    s = dict(settings or expert_settings(task, **kwargs))
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    ckpt = out / CHECKPOINT
    if resume and not ckpt.is_file():
        raise ParameterError(f'--resume: no checkpoint at {ckpt} (start without --resume)')
    if not resume and ckpt.is_file():
        raise ParameterError(f'{out} already holds a SAC run ({ckpt}): continue it with '
                             '--resume, or choose another -o')
    torch.manual_seed(s['seed'])
    rng = np.random.default_rng(s['seed'])
    env = make_env(task, seed=10_000 + s['seed'])  # evaluation uses seeds 0..; keep apart
    cfg = SACConfig(hidden=s['hidden'], lr=s['lr'], batch=s['batch'])
    agent = SAC(env.obs_dim, env.act_dim, cfg)
    capacity = 1_000_000 if s['steps'] is None else max(1000, s['steps'] // s['action_repeat'])
    buf = ReplayBuffer(env.obs_dim, env.act_dim, min(capacity, 1_000_000), seed=s['seed'])
    state = {'env_steps': 0, 'agent_steps': 0, 'best': -np.inf, 'history': [], 'seconds': 0.0,
             'episodes': 0}
    if resume:
        state = _load_checkpoint(ckpt, agent, buf)
        rng = np.random.default_rng([s['seed'], state['env_steps']])
        env = make_env(task, seed=10_000 + s['seed'] + state['episodes'])
    logf = (out / LOG).open('a')
    t_start, seconds0 = time.time(), float(state['seconds'])

    def note(**kw):
        kw.update(env_steps=state['env_steps'],
                  minutes=round((seconds0 + time.time() - t_start) / 60, 2))
        logf.write(json.dumps(kw) + '\n')
        logf.flush()

    bar = None
    if progress:
        from tqdm.auto import tqdm
        total = s['steps'] if s['steps'] is not None else None
        bar = tqdm(total=total, initial=state['env_steps'], unit='env step', desc=f'SAC {task}',
                   dynamic_ncols=True, mininterval=1.0)
    deadline = t_start + s['minutes'] * 60 if s['minutes'] is not None else None
    obs, ep_ret = env.reset(), 0.0
    next_eval = (state['env_steps'] // s['eval_every'] + 1) * s['eval_every']
    info: dict[str, float] = {}
    reason = 'budget'
    try:
        while True:
            if state['agent_steps'] * s['action_repeat'] < s['start_steps'] and not resume:
                act = rng.uniform(-1, 1, env.act_dim).astype(np.float32)
            else:
                act = agent.act(obs, explore=True)
            rew, done = 0.0, False
            for _ in range(s['action_repeat']):
                nxt, r, done = env.step(act)
                rew += r
                state['env_steps'] += 1
                if done:
                    break
            # a time limit is not a termination: bootstrap through it (notdone = 1)
            buf.add(obs, act, rew, nxt, 0.0 if env.terminated else 1.0)
            obs = nxt
            ep_ret += rew
            state['agent_steps'] += 1
            if bar is not None:
                bar.update(s['action_repeat'])
            if state['agent_steps'] * s['action_repeat'] >= s['start_steps'] or resume:
                info = agent.update(buf)
            if done:
                state['episodes'] += 1
                note(kind='train', ep_return=round(ep_ret, 2),
                     **{k: round(v, 4) for k, v in info.items()})
                obs, ep_ret = env.reset(), 0.0
            if state['env_steps'] >= next_eval:
                next_eval += s['eval_every']
                rets = evaluate(agent.actor, task, s['eval_episodes'], seed=0)
                mean = float(np.mean(rets))
                state['history'].append([state['env_steps'], round(mean, 2)])
                improved = mean > state['best']
                if improved:
                    state['best'] = mean
                    save_expert(agent.actor, task, 'sac', path=out / 'expert.safetensors', meta={
                        'algorithm': 'SAC (qail_ros.physics.sac)',
                        'env_steps': state['env_steps'], 'action_repeat': s['action_repeat'],
                        'seed': s['seed'], 'eval_return_mean': mean,
                        'eval_return_std': float(np.std(rets)),
                        'eval_episodes': s['eval_episodes'], 'config': vars(cfg),
                        'minutes': round((seconds0 + time.time() - t_start) / 60, 1)})
                state['seconds'] = seconds0 + time.time() - t_start
                _save_checkpoint(ckpt, agent, buf, state)
                note(kind='eval', ret_mean=round(mean, 2), ret_std=round(float(np.std(rets)), 2),
                     best=round(state['best'], 2), saved=improved)
                if bar is not None:
                    bar.set_postfix(eval=f'{mean:.1f}', best=f'{state["best"]:.1f}')
                else:
                    log.info('SAC %s: %d env steps, eval %.1f, best %.1f', task,
                             state['env_steps'], mean, state['best'])
                if s['target_return'] is not None and state['best'] >= s['target_return']:
                    reason = 'target return reached'
                    break
            if deadline is not None and time.time() >= deadline:
                break
            if s['steps'] is not None and state['env_steps'] >= s['steps']:
                break
        if not state['history'] or state['history'][-1][0] != state['env_steps']:
            # the budget ended between evaluations: evaluate the last actor too
            rets = evaluate(agent.actor, task, s['eval_episodes'], seed=0)
            mean = float(np.mean(rets))
            state['history'].append([state['env_steps'], round(mean, 2)])
            saved = mean > state['best'] or not (out / 'expert.safetensors').is_file()
            note(kind='eval', ret_mean=round(mean, 2), ret_std=round(float(np.std(rets)), 2),
                 best=round(max(mean, state['best']), 2), saved=saved)
            if saved:
                state['best'] = max(mean, state['best'])
                save_expert(agent.actor, task, 'sac', path=out / 'expert.safetensors', meta={
                    'algorithm': 'SAC (qail_ros.physics.sac)', 'env_steps': state['env_steps'],
                    'action_repeat': s['action_repeat'], 'seed': s['seed'],
                    'eval_return_mean': mean, 'eval_return_std': float(np.std(rets)),
                    'eval_episodes': s['eval_episodes'], 'config': vars(cfg),
                    'minutes': round((seconds0 + time.time() - t_start) / 60, 1)})
        state['seconds'] = seconds0 + time.time() - t_start
        _save_checkpoint(ckpt, agent, buf, state)
        note(kind='done', reason=reason, best=round(state['best'], 2))
    finally:
        if bar is not None:
            bar.close()
        logf.close()
    return {'task': task, 'env_steps': state['env_steps'], 'best_eval': state['best'],
            'history': state['history'], 'minutes': round(state['seconds'] / 60, 2),
            'reason': reason, 'settings': s, 'expert': str(out / 'expert.safetensors')}


def estimate_fp_seconds(task: str, *, episodes: int, noise_episodes: int, steps: int,
                        hidden: int, layers: int, batch: int = 256,
                        eval_episodes: int = 10) -> float:
    """Expected wall time of train_fp (demonstrations, BC steps, evaluations), measured for a
    second on this machine."""
    import torch

    from qail_ros.physics.policy import MLPPolicy
    from qail_ros.physics.tasks import env_step_seconds, make_env
    env = make_env(task, 0)
    env_s = env_step_seconds(env)
    policy = MLPPolicy(env.obs_dim, env.act_dim, hidden, layers)
    opt = torch.optim.AdamW(policy.parameters(), 1e-3)
    x = torch.randn(batch, env.obs_dim)
    t0, k = time.perf_counter(), 0
    while k < 30 and time.perf_counter() - t0 < 0.5:
        loss = policy(x).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        k += 1
    bc_s = (time.perf_counter() - t0) / k
    sim = (episodes + noise_episodes + 3 * eval_episodes) * env.max_steps * env_s * 1.3
    return sim + steps * bc_s


def train_fp(teacher: str | Path, task: str | None = None, *, episodes: int = 20,
             noise_episodes: int = 20, noise: float = 0.2, demo_seed: int = 1000,
             hidden: int = 256, layers: int = 3, steps: int = 20000, lr: float = 1e-3,
             seed: int = 0, eval_episodes: int = 10,
             command: str | None = None) -> dict[str, Any]:
    """Clone DIR/expert.safetensors into DIR/fp_policy.safetensors and write DIR/manifest.json.

    Demonstrations: `episodes` clean expert episodes plus `noise_episodes` where Gaussian noise
    (`noise`) perturbs the executed action while the expert's clean action is the label
    (DART-style); seeds from `demo_seed` on. MSE behaviour cloning (qail_ros.physics.bc), then
    the expert, the saved FP policy (after the save/load round trip) and a random policy are
    evaluated on seeds 0..eval_episodes-1.
    """
    import torch

    from qail_ros.physics.bc import train_bc
    from qail_ros.physics.closed_loop import collect_demonstrations, evaluate, random_policy
    from qail_ros.physics.models import load_expert, teacher_task
    from qail_ros.physics.policy import load_policy, save_policy
    from qail_ros.physics.tasks import make_env, resolve_task

    out = Path(teacher)
    task = task or teacher_task(out)
    spec = resolve_task(task)
    t0 = time.time()
    expert = load_expert(task, teacher=out)
    parts = [collect_demonstrations(expert, task, episodes, demo_seed)]
    if noise_episodes:
        parts.append(collect_demonstrations(expert, task, noise_episodes, demo_seed + episodes,
                                            action_noise=noise))
    obs = np.concatenate([d['obs'] for d in parts])
    act = np.concatenate([d['act'] for d in parts])
    demo_returns = np.concatenate([d['returns'] for d in parts])
    log.info('%s: %d demonstration pairs, demo returns clean %.1f%s', task, len(obs),
             np.mean(parts[0]['returns']),
             f', noisy {np.mean(parts[1]["returns"]):.1f}' if len(parts) > 1 else '')
    policy, summary = train_bc(obs, act, hidden=hidden, layers=layers, steps=steps, lr=lr,
                               seed=seed, log_every=max(1, steps // 10))
    path = out / 'fp_policy.safetensors'
    save_policy(policy, path, {'task': task, 'trained_by':
                               'behaviour cloning (MSE) on expert demonstrations'})
    policy = load_policy(path)  # measure exactly what is written
    fp = evaluate(policy, task, eval_episodes, seed=0)
    ex = evaluate(expert, task, eval_episodes, seed=0)
    env = make_env(task)
    with torch.random.fork_rng():
        rnd = evaluate(random_policy(env.act_dim, seed=0), task, eval_episodes, seed=0)
    from qail_ros.report import git_commit
    manifest = {
        'task': task, 'kind': spec.kind,
        'domain_task': [spec.domain, spec.task] if spec.kind == 'dm_control' else None,
        'obs_dim': env.obs_dim, 'act_dim': env.act_dim, 'episode_steps': env.max_steps,
        'fp_policy': {
            'file': 'fp_policy.safetensors', 'class': 'qail_ros.physics.MLPPolicy',
            'architecture': policy.config | {
                'activation': 'relu', 'output': 'tanh',
                'normalization': 'obs_mean/obs_std buffers, (obs - mean) / std'},
            'storage_dtype': 'float32',
            'training': summary | {
                'method': 'behaviour cloning, MSE on actions, AdamW + cosine decay',
                'demo_episodes_clean': episodes, 'demo_episodes_noisy': noise_episodes,
                'demo_action_noise_std': noise, 'demo_seeds_from': demo_seed,
                'demo_return_mean': round(float(demo_returns.mean()), 2), 'seed': seed},
            'return': returns_stats(fp)},
        'expert': {'file': 'expert.safetensors', 'kind': expert.__class__.__name__,
                   'how': getattr(expert, 'meta', {}), 'return': returns_stats(ex)},
        'random_policy': {'return': returns_stats(rnd)},
        'evaluation': {'seeds': f'0..{eval_episodes - 1}', 'function':
                       'qail_ros.physics.evaluate(policy, task, episodes, seed=0)'},
        'paper_fp_return': PAPER_FP.get(task),
        'command': command or (
            f'qail-ros train-fp --teacher DIR --episodes {episodes} --noise-episodes '
            f'{noise_episodes} --noise {noise} --hidden {hidden} --layers {layers} --steps '
            f'{steps} --lr {lr} --seed {seed}'),
        'commit': git_commit(),
        'minutes': round((time.time() - t0) / 60, 1),
    }
    (out / 'manifest.json').write_text(json.dumps(manifest, indent=2) + '\n')
    return manifest
