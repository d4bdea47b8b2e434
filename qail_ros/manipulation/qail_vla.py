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

from qail_ros.manipulation.vla import (Samples, SmallVLA, optimizer_step, rollouts,
                                       warmup_cosine)

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


def train_qlora(student: SmallVLA, teacher: SmallVLA, data: Samples, *, steps: int,
                qbc_lambda: float = 0.0, tasks: Sequence[str] = (), onpolicy_rounds: int = 2,
                onpolicy_episodes: int = 40, onpolicy_seed: int = 50_000, rank: int = 8,
                alpha: float | None = None, lr: float = 5e-4, batch: int = 32,
                distance: str = 'l2', weights: np.ndarray | None = None,
                onpolicy_weight_fn: Callable[[Samples], np.ndarray] | None = None,
                seed: int = 0, log: Callable[[str], None] | None = None) -> dict:
    """QLoRA fine-tuning of an INT4 student (see the module doc). qbc_lambda 0 = QAIL alone.
    `weights`: per-sample wQBC weights of `data` (None = 1); `onpolicy_weight_fn` gives the
    weights of collected on-policy states. Returns training statistics."""
    from qail_ros.qail.losses import qail_loss, qbc_loss, total_loss
    from qail_ros.quant.lora import add_lora
    g = np.random.default_rng(seed)
    params = add_lora(student.model.language_model, rank=rank, alpha=alpha, seed=seed)
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    sched = warmup_cosine(opt, steps)
    labels = student.action_tokens(data.actions)
    use_qbc = qbc_lambda > 0
    t_tok = teacher_tokens(teacher, data) if use_qbc else None
    w_data = None if weights is None else torch.as_tensor(weights, dtype=torch.float32)
    pool: Samples | None = None
    pool_tok = pool_w = None
    rounds = onpolicy_rounds if (use_qbc and tasks) else 0
    at = {int(steps * r / max(rounds, 1)) for r in range(rounds)}
    stats = {'qail': [], 'qbc': [], 'onpolicy_states': 0, 'onpolicy_success': []}
    t0 = time.perf_counter()
    for step in range(steps):
        if step in at:
            student.model.eval()
            got = []
            for k, task in enumerate(tasks):
                seeds = [onpolicy_seed + 1000 * step + 100 * k + i
                         for i in range(onpolicy_episodes)]
                s, res = rollouts(task, seeds, student.act)
                got.append(s)
                stats['onpolicy_success'].append(float(np.mean([r['success'] for r in res])))
            new = Samples.concat(got)
            new_tok = teacher_tokens(teacher, new)
            new_w = (torch.ones(len(new)) if onpolicy_weight_fn is None else
                     torch.as_tensor(onpolicy_weight_fn(new), dtype=torch.float32))
            if pool is None:
                pool, pool_tok, pool_w = new, new_tok, new_w
            else:
                pool = Samples.concat([pool, new])
                pool_tok, pool_w = torch.cat([pool_tok, new_tok]), torch.cat([pool_w, new_w])
            stats['onpolicy_states'] = len(pool)
            if log:
                log(f'on-policy round at step {step}: {len(new)} states, student success '
                    f'{stats["onpolicy_success"][-len(tasks):]}')
        student.model.train()
        half = batch // 2 if pool is not None else batch
        idx = g.integers(0, len(data), half)
        images, instr = data.images[idx], [data.instructions[i] for i in idx]
        if use_qbc:
            prefix = t_tok[idx]
            w = None if w_data is None else w_data[idx]
            if pool is not None:
                j = g.integers(0, len(pool), batch - half)
                images = np.concatenate([images, pool.images[j]])
                instr = instr + [pool.instructions[i] for i in j]
                prefix = torch.cat([prefix, pool_tok[j]])
                if w is not None or onpolicy_weight_fn is not None:
                    w = torch.cat([torch.ones(half) if w is None else w, pool_w[j]])
            # QAIL on the data samples (their labels as the prefix), QBC on every state
            # (the teacher's tokens as the prefix of both policies)
            s_lab = student.teacher_forced_logits(images[:half], instr[:half], labels[idx])
            l_qail = qail_loss(s_lab, labels[idx], head='tokens')
            s_out = student.teacher_forced_logits(images, instr, prefix)
            with torch.no_grad():
                t_out = teacher.teacher_forced_logits(images, instr, prefix)
            l_qbc = qbc_loss(s_out, t_out, distance=distance, weights=w)
            loss = total_loss(l_qail, l_qbc, qbc_lambda)
            stats['qbc'].append(float(l_qbc.detach()))
        else:
            s_lab = student.teacher_forced_logits(images, instr, labels[idx])
            l_qail = qail_loss(s_lab, labels[idx], head='tokens')
            loss = l_qail
        stats['qail'].append(float(l_qail.detach()))
        optimizer_step(loss, opt, sched, params)
        if log and (step + 1) % max(steps // 5, 1) == 0:
            msg = f'qlora step {step + 1}/{steps} qail {np.mean(stats["qail"][-50:]):.4f}'
            if use_qbc:
                msg += f' qbc {np.mean(stats["qbc"][-50:]):.4f}'
            log(msg + f' ({time.perf_counter() - t0:.0f} s)')
    student.model.eval()
    return {'steps': steps, 'qbc_lambda': qbc_lambda, 'rank': rank, 'lr': lr,
            'final_qail': float(np.mean(stats['qail'][-100:])),
            'final_qbc': float(np.mean(stats['qbc'][-100:])) if stats['qbc'] else None,
            'onpolicy_states': stats['onpolicy_states'],
            'onpolicy_success': stats['onpolicy_success'],
            'trainable_params': int(sum(p.numel() for p in params)),
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
