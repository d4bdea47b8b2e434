"""The training losses of QAIL: behaviour cloning of the quantized student (L_QAIL), its alignment
with the frozen full-precision teacher (L_QBC, optionally weighted per state: wQBC / SIS-QRD),
and the LPPD-style distillation baseline.

Every loss here first computes one value per sample and then reduces the batch as
`mean(weight * per_sample)`, the empirical form of `E_s[alpha(s) * D(s)]` used by both the QAIL
paper (wQBC) and the SQIL code (QRD). With all weights 1 this is the plain batch mean. The
weights are not renormalised: beta = 2 really doubles the pull of the important states.

Policy heads (what a policy's forward returns) and the L_QAIL each one uses:

- `'deterministic'`: a tensor of actions (B, ...). Its likelihood is not defined, so L_QAIL is
  the MSE surrogate: the mean over action elements of (pi_q(s) - a)^2, i.e. the negative
  log-likelihood of a unit-variance Gaussian centred on the output, up to scale and a constant.
- `'gaussian'`: a `torch.distributions.Distribution` with `log_prob`, or a `(mean, log_std)`
  pair (a diagonal Gaussian). L_QAIL = -log pi_q(a|s), summed over action dimensions.
- `'categorical'` / `'tokens'`: logits (B, V) or (B, T, V) and integer targets (B,) or (B, T),
  e.g. OpenVLA's 7 action tokens. L_QAIL = cross-entropy, averaged over the valid tokens of each
  sample (`ignore_index` marks padding).
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from qail_ros.qail.config import DISTANCES, HEADS

__all__ = ['HEADS', 'DISTANCES', 'qail_loss', 'qbc_loss', 'lppd_loss', 'total_loss',
           'weighted_mean', 'output_tensor']


def weighted_mean(per_sample: Tensor, weights: Tensor | None = None) -> Tensor:
    """`mean(weights * per_sample)` over the batch; plain mean when `weights` is None."""
    if per_sample.dim() != 1:
        raise ValueError(f'per-sample losses must be 1-D (B,), got shape '
                         f'{tuple(per_sample.shape)}')
    if weights is None:
        return per_sample.mean()
    weights = torch.as_tensor(weights, dtype=per_sample.dtype, device=per_sample.device)
    if weights.shape != per_sample.shape:
        raise ValueError(f'weights of shape {tuple(weights.shape)} do not match the batch '
                         f'{tuple(per_sample.shape)}: pass one weight per sample')
    return (weights * per_sample).mean()


def _as_gaussian(out: Any) -> torch.distributions.Distribution:
    if isinstance(out, torch.distributions.Distribution):
        return out
    if isinstance(out, (tuple, list)) and len(out) == 2:
        mean, log_std = out
        return torch.distributions.Normal(mean, log_std.exp())
    raise TypeError('a gaussian head must return a torch Distribution or a (mean, log_std) '
                    f'pair, got {type(out).__name__}')


def output_tensor(out: Any) -> Tensor:
    """The 'final output' of a policy as one tensor (B, ...): what QBC compares.

    A tensor is itself (actions or logits); a Gaussian is its parameters (mean and std
    concatenated on the last axis); a categorical distribution is its logits; a (mean, log_std)
    pair is concatenated the same way.
    """
    if isinstance(out, Tensor):
        return out
    if isinstance(out, torch.distributions.Categorical):
        return out.logits
    if isinstance(out, torch.distributions.Distribution):
        return torch.cat([out.mean, out.stddev], dim=-1)
    if isinstance(out, (tuple, list)):
        return torch.cat([torch.as_tensor(o) for o in out], dim=-1)
    raise TypeError(f'cannot compare policy outputs of type {type(out).__name__}: return a '
                    'tensor, a (mean, log_std) pair or a torch Distribution')


def _flat(x: Tensor) -> Tensor:
    return x.reshape(x.shape[0], -1)


def qail_loss(student_out: Any, target: Tensor, *, head: str = 'deterministic',
              weights: Tensor | None = None, ignore_index: int = -100) -> Tensor:
    """L_QAIL: behaviour cloning of the quantized student on (s, a) pairs of D_QAIL.

    `student_out` is the student's forward output on the states, `target` the demonstrated
    actions (floats for deterministic/gaussian heads, integer classes or tokens otherwise).
    """
    if head == 'deterministic':
        out = output_tensor(student_out)
        target = target.to(out.dtype).reshape(out.shape)
        per = _flat((out - target) ** 2).mean(1)
    elif head == 'gaussian':
        dist = _as_gaussian(student_out)
        logp = dist.log_prob(target.to(dist.mean.dtype))
        per = -_flat(logp).sum(1)
    elif head in ('categorical', 'tokens'):
        logits = output_tensor(student_out)
        target = target.long()
        if logits.dim() == 2:  # (B, V) and (B,)
            logits, target = logits.unsqueeze(1), target.reshape(-1, 1)
        if logits.shape[:-1] != target.shape:
            raise ValueError(f'logits {tuple(logits.shape)} and token targets '
                             f'{tuple(target.shape)} do not line up: expected (B, T, V) and '
                             '(B, T)')
        ce = F.cross_entropy(logits.transpose(1, 2), target, ignore_index=ignore_index,
                             reduction='none')  # (B, T)
        valid = (target != ignore_index).to(ce.dtype)
        per = (ce * valid).sum(1) / valid.sum(1).clamp_min(1.0)
    else:
        raise ValueError(f'unknown policy head {head!r}: use one of {", ".join(HEADS)}')
    return weighted_mean(per, weights)


def qbc_loss(student_out: Any, teacher_out: Any, *, distance: str = 'l2',
             weights: Tensor | None = None, temperature: float = 1.0) -> Tensor:
    """L_QBC: distance between the student's and the frozen teacher's final outputs, per state.

    distance:
      `'l2'`  Euclidean distance ||pi_q(s) - pi_fp(s)||_2 of the flattened outputs (the paper's
              'mean L2 distance' between final outputs; its gradient has unit norm per sample).
      `'mse'` mean of the squared element differences (the SQIL code's QRD term: mean over
              tokens and vocabulary of the squared logit difference).
      `'kl'`  KL(pi_fp || pi_q) for distribution heads: distributions via
              torch.distributions.kl_divergence (summed over event dims), logits via softmax at
              `temperature` (summed over the vocabulary, averaged over tokens).
    The teacher side is detached: gradients flow into the student only.
    """
    if distance in ('l2', 'mse'):
        s = output_tensor(student_out)
        t = output_tensor(teacher_out).detach().to(s.dtype)
        if s.shape != t.shape:
            raise ValueError(f'student output {tuple(s.shape)} and teacher output '
                             f'{tuple(t.shape)} differ in shape: QBC compares like with like')
        diff = _flat(s - t)
        if distance == 'l2':
            # sqrt with a floor keeps the gradient finite when the outputs coincide exactly.
            per = (diff.pow(2).sum(1) + 1e-12).sqrt()
        else:
            per = diff.pow(2).mean(1)
    elif distance == 'kl':
        if isinstance(student_out, Tensor):
            if temperature <= 0:
                raise ValueError(f'temperature must be > 0, got {temperature}')
            s_logp = F.log_softmax(student_out / temperature, dim=-1)
            t_logp = F.log_softmax(output_tensor(teacher_out).detach() / temperature, dim=-1)
            kl = (t_logp.exp() * (t_logp - s_logp)).sum(-1)  # (B,) or (B, T)
            per = _flat(kl).mean(1)
        else:
            s_dist = _as_gaussian(student_out) if not isinstance(
                student_out, torch.distributions.Distribution) else student_out
            t_dist = _as_gaussian(teacher_out) if not isinstance(
                teacher_out, torch.distributions.Distribution) else teacher_out
            t_dist = _detach_dist(t_dist)
            per = _flat(torch.distributions.kl_divergence(t_dist, s_dist)).sum(1)
    else:
        raise ValueError(f'unknown QBC distance {distance!r}: use one of {", ".join(DISTANCES)}')
    return weighted_mean(per, weights)


def _detach_dist(dist: torch.distributions.Distribution) -> torch.distributions.Distribution:
    if isinstance(dist, torch.distributions.Normal):
        return torch.distributions.Normal(dist.loc.detach(), dist.scale.detach())
    if isinstance(dist, torch.distributions.Categorical):
        return torch.distributions.Categorical(logits=dist.logits.detach())
    return dist  # other families: the caller computes the teacher under no_grad anyway


def lppd_loss(student_out: Any, teacher_out: Any, *, head: str = 'deterministic',
              temperature: float = 1.0) -> Tensor:
    """LPPD-style low-precision policy distillation (McKinstry et al. 2018) as a baseline.

    LPPD trains a low-precision student, quantized in the forward pass, to reproduce a trained
    teacher's outputs on states from the teacher's own experience, with no demonstrations and
    no behaviour-cloning term (policy distillation after Rusu et al. 2016). The distillation
    loss follows the head: KL(softmax(t/tau) || softmax(s/tau)) for logits (the DQN-distillation
    form), KL for distributions, and the mean squared error of the outputs for deterministic
    continuous actions. Which states it sees (the teacher's) is the trainer's business.
    """
    if head == 'deterministic':
        return qbc_loss(student_out, teacher_out, distance='mse')
    if head in ('gaussian', 'categorical', 'tokens'):
        return qbc_loss(student_out, teacher_out, distance='kl', temperature=temperature)
    raise ValueError(f'unknown policy head {head!r}: use one of {", ".join(HEADS)}')


def total_loss(l_qail: Tensor | None, l_qbc: Tensor | None, lam: float = 1.0) -> Tensor:
    """L = L_QAIL + lambda * L_QBC; either term may be absent (QAIL alone, QBC alone)."""
    if l_qail is None and l_qbc is None:
        raise ValueError('total_loss needs at least one of L_QAIL and L_QBC')
    if l_qbc is None:
        return l_qail
    if l_qail is None:
        return lam * l_qbc
    return l_qail + lam * l_qbc
