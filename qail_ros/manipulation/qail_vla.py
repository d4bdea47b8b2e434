"""INT4 weight-only VLA students: AWQ initialisation, then QLoRA QAIL / QAIL+QBC fine-tuning.

    student = quantize_awq(fp, calibration_samples)         # frozen INT4 Llama (fake quant)
    train_qlora(student, fp, d_qail, qbc_lambda=1.0, tasks=('lift', 'place'))   # adapters only
    deploy(student)                                          # int4 kernel + float adapters

The Llama backbone's linear layers (lm_head excluded, as OpenVLA's INT4 deployments keep it)
are quantized to INT4 per output channel with AWQ (the paper's setting), frozen, and wrapped in
LoRA adapters (qail_ros.quant.lora). `bits=3` / `bits=2` give harsher INT3 / INT2 students
(same asymmetric scheme, 8 / 4 levels per channel or group). Training updates the adapters only:

- L_QAIL: cross-entropy of the student's 7 action tokens against D_QAIL's labels
  (D_E: the scripted expert's actions; D_FP: the FP policy's own actions on its rollouts).
- L_QBC (QAIL+QBC): distance between the student's and the frozen FP teacher's logits over the
  7 action tokens, both teacher-forced on the teacher's greedy tokens, on states from D_QAIL and
  from the student's own rollouts (collected `onpolicy_rounds` times during training, labelled
  by the teacher: the paper's sampling of s from the quantized policy's state distribution).
  Optional per-state weights (wQBC / SIS-QRD) from image saliency of the teacher.
The vision towers and projector stay float and frozen (the paper: quantizing the LLM is what
costs accuracy; the ViT runs in TensorRT FP16 on the robot).
"""
from __future__ import annotations

import copy
import time
from typing import Callable, Sequence

import numpy as np
import torch

from qail_ros.manipulation.vla import Samples, SmallVLA, rollouts, warmup_cosine

__all__ = ['quantize_awq', 'train_qlora', 'deploy', 'teacher_tokens']


def _calibration(fp: SmallVLA, samples: Samples, n: int = 64, seed: int = 0) -> list[dict]:
    idx = np.random.default_rng(seed).choice(len(samples), min(n, len(samples)), replace=False)
    tokens = fp.action_tokens(samples.actions[idx])
    out = []
    with torch.no_grad():       # one training-like sequence per sample: prompt + its action
        for i, action in zip(idx, tokens):
            ids = torch.as_tensor([fp.prompt_ids(samples.instructions[i]) + action.tolist()])
            out.append({'inputs_embeds': fp.model.multimodal_embeddings(
                fp.pixel_values(samples.images[i:i + 1]), ids)})
    return out


def quantize_awq(fp: SmallVLA, calibration: Samples, *, scheme: str = 'awq',
                 granularity: str = 'per_channel', group_size: int = 128,
                 n_calibration: int = 64, bits: int = 4) -> SmallVLA:
    """A copy of `fp` whose Llama linear layers are `bits`-bit weight-only (AWQ or RTN, both
    asymmetric with a zero point), frozen. bits 4 is the paper's INT4; 3 and 2 are the harsher
    settings where PTQ starts to lose accuracy (all <= 4-bit widths deploy on the int4 kernel)."""
    from qail_ros import quant
    from qail_ros.errors import ParameterError
    if isinstance(bits, bool) or bits not in (2, 3, 4):
        raise ParameterError(f'bits={bits!r}: the VLA students take 2, 3 or 4-bit weights '
                             '(the int4 kernel deploys them); choose one of those')
    student = SmallVLA(copy.deepcopy(fp.model), fp.tokenizer, fp.stats)
    kw = {'bits': bits, 'granularity': granularity, 'group_size': group_size,
          'exclude': ['lm_head']}
    if scheme == 'awq':
        cfg = quant.Int4WeightOnlyAWQ(**kw)
        calib = _calibration(fp, calibration, n_calibration)
    elif scheme == 'rtn':
        cfg, calib = quant.WeightOnlyRTN(symmetric=False, **kw), None
    else:
        raise ParameterError(f'weight-only scheme {scheme!r}: use awq or rtn')
    quant.quantize_(student.model.language_model, cfg, calibration=calib)
    for p in student.model.parameters():
        p.requires_grad_(False)
    student.model.eval()
    return student


@torch.no_grad()
def teacher_tokens(teacher: SmallVLA, samples: Samples, batch: int = 128) -> torch.Tensor:
    """The teacher's greedy action tokens on each state (B, 7): the prefix QBC conditions on."""
    out = []
    for k in range(0, len(samples), batch):
        t, _ = teacher.generate(samples.images[k:k + batch], samples.instructions[k:k + batch])
        out.append(torch.as_tensor(t))
    return torch.cat(out) if out else torch.zeros((0, 7), dtype=torch.long)


class _StudentStep(torch.nn.Module):
    """The student's forward of one micro-batch as one module call (DistributedDataParallel
    reduces the adapters' gradients of exactly one call per backward): logits on the labels'
    prefix for L_QAIL, and on the teacher's tokens for L_QBC."""

    def __init__(self, vla: SmallVLA):
        super().__init__()
        self.model = vla.model
        self.__dict__['vla'] = vla           # not a submodule: its model already is

    def forward(self, images, instructions, labels, n_labelled: int, prefix=None):
        s_lab = self.vla.teacher_forced_logits(images[:n_labelled], instructions[:n_labelled],
                                               labels, model=self.model)
        s_out = (None if prefix is None else
                 self.vla.teacher_forced_logits(images, instructions, prefix, model=self.model))
        return s_lab, s_out


def train_qlora(student: SmallVLA, teacher: SmallVLA, data: Samples, *, steps: int,
                qbc_lambda: float = 0.0, tasks: Sequence[str] = (), onpolicy_rounds: int = 2,
                onpolicy_episodes: int = 40, onpolicy_seed: int = 50_000, rank: int = 8,
                alpha: float | None = None, lr: float = 5e-4, batch: int = 32,
                distance: str = 'l2', weights: np.ndarray | None = None,
                onpolicy_weight_fn: Callable[[Samples], np.ndarray] | None = None,
                seed: int = 0, log: Callable[[str], None] | None = None,
                device: str = 'cpu', precision: str = 'fp32', grad_accum: int = 1,
                activation_checkpointing: bool = False, checkpoint_dir: str | None = None,
                checkpoint_every: int = 0, resume: str | None = None,
                history: list | None = None) -> dict:
    """QLoRA fine-tuning of an INT4 student (see the module doc). qbc_lambda 0 = QAIL alone.
    `weights`: per-sample wQBC weights of `data` (None = 1); `onpolicy_weight_fn` gives the
    weights of collected on-policy states. Returns training statistics.

    Runs in `qail_ros.training.distributed.TrainLoop`: under torchrun every rank holds the
    frozen INT4 backbone and the adapters train under DistributedDataParallel; `batch` is the
    global batch of a step whatever the number of processes (each rank its slice, in
    `grad_accum` micro-batches); each rank rolls out its own on-policy episodes. `precision`
    bf16 = autocast; `activation_checkpointing` recomputes the Llama's activations in the
    backward; checkpoints every `checkpoint_every` steps and on SIGTERM / SIGINT. `history`: a
    list that receives each step's losses (averaged over the ranks)."""
    from qail_ros.qail.losses import qail_loss, qbc_loss, total_loss
    from qail_ros.quant.lora import add_lora, lora_state_dict
    from qail_ros.training.distributed import (Checkpointer, GlobalBatches, TrainLoop,
                                               enable_activation_checkpointing, setup)
    dist = setup(device)
    g_pool = np.random.default_rng([seed, 1, dist.rank])   # this rank's draws of its pool
    params = add_lora(student.model.language_model, rank=rank, alpha=alpha, seed=seed)
    student.model.to(dist.device)
    teacher.model.to(dist.device)
    if activation_checkpointing:
        enable_activation_checkpointing(student.model.language_model)
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    sched = warmup_cosine(opt, steps)
    labels = student.action_tokens(data.actions)
    use_qbc = qbc_lambda > 0
    t_tok = teacher_tokens(teacher, data) if use_qbc else None
    w_data = None if weights is None else torch.as_tensor(weights, dtype=torch.float32)
    state: dict = {'pool': None, 'pool_tok': None, 'pool_w': None}
    rounds = onpolicy_rounds if (use_qbc and tasks) else 0
    at = {int(steps * r / max(rounds, 1)) for r in range(rounds)}
    stats = {'onpolicy_states': 0, 'onpolicy_success': []}
    batches = GlobalBatches(len(data), batch, dist, accum=grad_accum, seed=seed, mode='numpy')
    unit = dist.world * grad_accum
    half_global = max(unit, batch // 2 // unit * unit)
    pool_local = (batch - half_global) // unit    # pool states per micro-batch of a rank
    t0 = time.perf_counter()

    def before_step(step: int) -> None:
        if step - 1 not in at:
            return
        student.model.eval()
        got = []
        for k, task in enumerate(tasks):
            seeds = [onpolicy_seed + 1_000_000 * dist.rank + 1000 * (step - 1) + 100 * k + i
                     for i in range(onpolicy_episodes)]
            s, res = rollouts(task, seeds, student.act)
            got.append(s)
            stats['onpolicy_success'].append(float(np.mean([r['success'] for r in res])))
        new = Samples.concat(got)
        new_tok = teacher_tokens(teacher, new)
        new_w = (torch.ones(len(new)) if onpolicy_weight_fn is None else
                 torch.as_tensor(onpolicy_weight_fn(new), dtype=torch.float32))
        if state['pool'] is None:
            state.update(pool=new, pool_tok=new_tok, pool_w=new_w)
        else:
            state.update(pool=Samples.concat([state['pool'], new]),
                         pool_tok=torch.cat([state['pool_tok'], new_tok]),
                         pool_w=torch.cat([state['pool_w'], new_w]))
        stats['onpolicy_states'] = len(state['pool'])
        batches.size = half_global       # from now on half of each batch comes from the pool
        if log and dist.is_main:
            log(f'on-policy round at step {step - 1}: {len(new)} states, student success '
                f'{stats["onpolicy_success"][-len(tasks):]}')

    def loss_fn(model, idx, step):
        idx = idx.numpy()
        pool = state['pool']
        half = len(idx)
        images, instr = data.images[idx], [data.instructions[i] for i in idx]
        lab = labels[idx].to(dist.device)
        if not use_qbc:
            s_lab, _ = model(images, instr, lab, half)
            l_qail = qail_loss(s_lab, lab, head='tokens')
            return l_qail, {'qail': l_qail}
        prefix = t_tok[idx]
        w = None if w_data is None else w_data[idx]
        if pool is not None:
            j = g_pool.integers(0, len(pool), pool_local)
            images = np.concatenate([images, pool.images[j]])
            instr = instr + [pool.instructions[i] for i in j]
            prefix = torch.cat([prefix, state['pool_tok'][j]])
            if w is not None or onpolicy_weight_fn is not None:
                w = torch.cat([torch.ones(half) if w is None else w, state['pool_w'][j]])
        # QAIL on the data samples (their labels as the prefix), QBC on every state
        # (the teacher's tokens as the prefix of both policies)
        prefix = prefix.to(dist.device)
        s_lab, s_out = model(images, instr, lab, half, prefix)
        l_qail = qail_loss(s_lab, lab, head='tokens')
        with torch.no_grad():
            t_out = teacher.teacher_forced_logits(images, instr, prefix)
        l_qbc = qbc_loss(s_out, t_out, distance=distance,
                         weights=None if w is None else w.to(dist.device))
        return total_loss(l_qail, l_qbc, qbc_lambda), {'qail': l_qail, 'qbc': l_qbc}

    def log_fn(rec: dict) -> None:
        step = rec['step']
        if log and step % max(steps // 5, 1) == 0:
            msg = f'qlora step {step}/{steps} qail {rec["qail"]:.4f}'
            if 'qbc' in rec:
                msg += f' qbc {rec["qbc"]:.4f}'
            log(msg + f' ({time.perf_counter() - t0:.0f} s)')

    lm = student.model.language_model

    def load_adapters(sd: dict) -> None:
        lm.load_state_dict(sd, strict=False)

    def trainer_state() -> dict:
        return {'pool': state['pool'], 'pool_tok': state['pool_tok'], 'pool_w': state['pool_w'],
                'g_pool': g_pool.bit_generator.state, 'stats': stats}

    def load_trainer_state(st: dict) -> None:
        state.update(pool=st['pool'], pool_tok=st['pool_tok'], pool_w=st['pool_w'])
        g_pool.bit_generator.state = st['g_pool']
        stats.update(st['stats'])
        if state['pool'] is not None:
            batches.size = half_global

    checkpointer = (Checkpointer(checkpoint_dir, checkpoint_every, dist) if checkpoint_dir
                    else None)
    loop = TrainLoop(_StudentStep(student), opt, loss_fn, batches, steps=steps, dist=dist,
                     scheduler=sched, params=params, grad_clip=1.0, precision=precision,
                     checkpointer=checkpointer, resume=resume, log_every=1,
                     before_step=before_step, frozen_local=True,
                     model_state=(lambda: lora_state_dict(lm), load_adapters),
                     trainer_state=(trainer_state, load_trainer_state), log_fn=log_fn)
    run = loop.run()
    if history is not None:
        history.extend(run.history)
    student.model.eval()
    qail = [r['qail'] for r in run.history]
    qbc = [r['qbc'] for r in run.history if 'qbc' in r]
    return {'steps': steps, 'qbc_lambda': qbc_lambda, 'rank': rank, 'lr': lr,
            'final_qail': float(np.mean(qail[-100:])),
            'final_qbc': float(np.mean(qbc[-100:])) if qbc else None,
            'onpolicy_states': stats['onpolicy_states'],
            'onpolicy_success': stats['onpolicy_success'],
            'trainable_params': int(sum(p.numel() for p in params)), 'world': dist.world,
            'seconds': time.perf_counter() - t0}


def deploy(student: SmallVLA) -> SmallVLA:
    """Swap the fake-quantized layers for torch's packed int4 CPU kernel (bf16 compute);
    LoRA adapters, if any, stay float beside them. In place; returns the student.

    INT3 / INT2 students run on the same kernel: their asymmetric codes [0, 7] / [0, 3] are a
    subset of the kernel's [0, 15], and the zero point is folded into its (scale, zero) pairs,
    so the kernel computes exactly the fake-quant weights (to bf16 rounding)."""
    from qail_ros import quant
    quant.convert_to_integer(student.model.language_model)
    return student
