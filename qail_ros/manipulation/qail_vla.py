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
import logging
import time
from typing import Any, Callable, Sequence

import numpy as np
import torch

from qail_ros.manipulation.vla import Samples, SmallVLA, rollouts
from qail_ros.qail.trainer import StudentBatch, StudentHooks

__all__ = ['quantize_awq', 'train_qlora', 'deploy', 'teacher_tokens', 'VLAHooks', 'weight_bits']

log = logging.getLogger(__name__)


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
    prefix for L_QAIL (none without labels: QBC alone, LPPD), and on the teacher's tokens for
    L_QBC / LPPD."""

    def __init__(self, vla: SmallVLA):
        super().__init__()
        self.model = vla.model
        self.__dict__['vla'] = vla           # not a submodule: its model already is

    def forward(self, images, instructions, labels, n_labelled: int, prefix=None):
        s_lab = (None if labels is None else
                 self.vla.teacher_forced_logits(images[:n_labelled], instructions[:n_labelled],
                                                labels, model=self.model))
        s_out = (None if prefix is None else
                 self.vla.teacher_forced_logits(images, instructions, prefix, model=self.model))
        return s_lab, s_out


class VLAHooks(StudentHooks):
    """QLoRA students of the VLA in `QAILTrainer`: token cross-entropy on the 7 action tokens
    (L_QAIL), teacher-forced logits compared with the FP teacher's on its greedy tokens (L_QBC),
    LoRA adapters as the only trainable parameters, on-policy rollouts of the student on the
    table-top tasks relabelled by the teacher (see the module doc).

    The student is quantized beforehand (`quantize_awq`); `prepare` wraps its Llama's linear
    layers in rank-`rank` adapters. Batches: a numpy generator seeded with the run's seed; once
    a pool of on-policy states exists, half of each batch comes from it (drawn by this rank's
    own generator). Checkpoints keep the adapters only.
    """

    optimizer = 'adamw'
    schedule = 'warmup_cosine'
    final_lr = 0.1
    sampling = 'numpy'
    frozen_local = True
    find_unused_parameters = False
    sync_buffers = True

    def __init__(self, *, tasks: Sequence[str] = (), onpolicy_rounds: int = 2,
                 onpolicy_episodes: int = 40, onpolicy_seed: int = 50_000, rank: int = 8,
                 alpha: float | None = None, weights: np.ndarray | None = None,
                 onpolicy_weight_fn: Callable[[Samples], np.ndarray] | None = None,
                 activation_checkpointing: bool = False):
        self.tasks, self.rounds = tuple(tasks), onpolicy_rounds
        self.episodes, self.onpolicy_seed = onpolicy_episodes, onpolicy_seed
        self.rank, self.alpha = rank, alpha
        self.weights, self.onpolicy_weight_fn = weights, onpolicy_weight_fn
        self.activation_checkpointing = activation_checkpointing
        self.pool: Samples | None = None
        self.pool_tok: torch.Tensor | None = None
        self.pool_w: torch.Tensor | None = None
        self.stats: dict[str, Any] = {'onpolicy_states': 0, 'onpolicy_success': []}
        self.params: list[torch.Tensor] = []

    @property
    def collected(self) -> int:
        """On-policy states in the pool (the trainer's summary)."""
        return int(self.stats['onpolicy_states'])

    def bind(self, trainer) -> None:
        super().bind(trainer)
        self.cfg, self.data, self.dist = trainer.config, trainer.data, trainer.dist
        self.g_pool = np.random.default_rng([self.cfg.seed, 1, self.dist.rank])

    def setup_teacher(self, teacher: SmallVLA) -> SmallVLA:
        teacher.model.to(self.dist.device)
        return teacher

    def prepare(self, student: SmallVLA | None) -> SmallVLA:
        from qail_ros.errors import ParameterError
        from qail_ros.quant.lora import add_lora
        from qail_ros.training.distributed import enable_activation_checkpointing
        if student is None:
            raise ParameterError('a VLA student is quantized first: pass quantize_awq(teacher, '
                                 'data) to QAILTrainer.train')
        self.params = add_lora(student.model.language_model, rank=self.rank, alpha=self.alpha,
                               seed=self.cfg.seed)
        student.model.to(self.dist.device)
        if self.activation_checkpointing:
            enable_activation_checkpointing(student.model.language_model)
        self.step_module = _StudentStep(student)
        return student

    def parameters(self, student: SmallVLA) -> list[torch.Tensor]:
        return self.params

    def module(self, student: SmallVLA) -> torch.nn.Module:
        return self.step_module

    def finish(self, student: SmallVLA) -> SmallVLA:
        student.model.eval()
        return student

    def model_state(self, student: SmallVLA):
        from qail_ros.quant.lora import lora_state_dict
        lm = student.model.language_model
        return (lambda: lora_state_dict(lm), lambda sd: lm.load_state_dict(sd, strict=False))

    def start(self, student: SmallVLA, n_data: int) -> int:
        cfg, dist = self.cfg, self.dist
        self.student = student
        self.labels = student.action_tokens(self.data.actions)
        self.use_qail = cfg.uses_qail
        lppd = cfg.canonical_method == 'lppd'
        self.use_qbc = cfg.uses_qbc or lppd        # both compare with the teacher's logits
        self.t_tok = teacher_tokens(self.trainer.teacher, self.data) if self.use_qbc else None
        self.index = np.arange(n_data)
        if lppd:      # the teacher's own states (D_FP), if there are any
            fp = np.flatnonzero(np.asarray(self.data.source) == 'fp')
            self.index = fp if len(fp) else self.index
        self.w_data = (None if self.weights is None else
                       torch.as_tensor(self.weights, dtype=torch.float32))
        rounds = self.rounds if (cfg.uses_qbc and self.tasks) else 0
        self.at = {int(cfg.steps * r / max(rounds, 1)) for r in range(rounds)}
        unit = dist.world * cfg.grad_accum
        self.half_global = max(unit, cfg.batch_size // 2 // unit * unit)
        self.pool_local = (cfg.batch_size - self.half_global) // unit  # pool states per micro
        return len(self.index)

    def before_step(self, student: SmallVLA, step: int) -> None:
        if step - 1 not in self.at:
            return
        student.model.eval()
        got = []
        for k, task in enumerate(self.tasks):
            seeds = [self.onpolicy_seed + 1_000_000 * self.dist.rank + 1000 * (step - 1)
                     + 100 * k + i for i in range(self.episodes)]
            s, res = rollouts(task, seeds, student.act)
            got.append(s)
            self.stats['onpolicy_success'].append(float(np.mean([r['success'] for r in res])))
        new = Samples.concat(got)
        new_tok = teacher_tokens(self.trainer.teacher, new)
        new_w = (torch.ones(len(new)) if self.onpolicy_weight_fn is None else
                 torch.as_tensor(self.onpolicy_weight_fn(new), dtype=torch.float32))
        if self.pool is None:
            self.pool, self.pool_tok, self.pool_w = new, new_tok, new_w
        else:
            self.pool = Samples.concat([self.pool, new])
            self.pool_tok = torch.cat([self.pool_tok, new_tok])
            self.pool_w = torch.cat([self.pool_w, new_w])
        self.stats['onpolicy_states'] = len(self.pool)
        self.batches.size = self.half_global   # from now on half of each batch is the pool's
        if self.dist.is_main:
            log.info('on-policy round at step %d: %d states, student success %s', step - 1,
                     len(new), self.stats['onpolicy_success'][-len(self.tasks):])

    def batch(self, idx: torch.Tensor, step: int) -> StudentBatch:
        idx = self.index[idx.numpy()]
        data, half = self.data, len(idx)
        images, instr = data.images[idx], [data.instructions[i] for i in idx]
        lab = self.labels[idx].to(self.dist.device) if self.use_qail else None
        if not self.use_qbc:
            return StudentBatch((images, instr, None), lab, half)
        prefix = self.t_tok[idx]
        w = None if self.w_data is None else self.w_data[idx]
        if self.pool is not None:
            j = self.g_pool.integers(0, len(self.pool), self.pool_local)
            images = np.concatenate([images, self.pool.images[j]])
            instr = instr + [self.pool.instructions[i] for i in j]
            prefix = torch.cat([prefix, self.pool_tok[j]])
            if w is not None or self.onpolicy_weight_fn is not None:
                w = torch.cat([torch.ones(half) if w is None else w, self.pool_w[j]])
        # QAIL on the data samples (their labels as the prefix), QBC on every state
        # (the teacher's tokens as the prefix of both policies)
        return StudentBatch((images, instr, prefix.to(self.dist.device)), lab, half, w)

    def forward(self, model: torch.nn.Module, batch: StudentBatch):
        images, instr, prefix = batch.inputs
        return model(images, instr, batch.labels, batch.n_labelled, prefix)

    def teacher_forward(self, batch: StudentBatch) -> torch.Tensor:
        images, instr, prefix = batch.inputs
        return self.trainer.teacher.teacher_forced_logits(images, instr, prefix)

    def state(self) -> dict[str, Any]:
        return {'pool': self.pool, 'pool_tok': self.pool_tok, 'pool_w': self.pool_w,
                'g_pool': self.g_pool.bit_generator.state, 'stats': self.stats}

    def load_state(self, state: dict[str, Any]) -> None:
        self.pool, self.pool_tok, self.pool_w = state['pool'], state['pool_tok'], state['pool_w']
        self.g_pool.bit_generator.state = state['g_pool']
        self.stats.update(state['stats'])
        if self.pool is not None:
            self.batches.size = self.half_global


def weight_bits(student: SmallVLA) -> int:
    """The weight width of a student's quantized Llama (`quantize_awq(bits=...)`; 4 when it
    has no weight quantizer yet)."""
    for m in student.model.language_model.modules():
        q = getattr(m, 'weight_quant', None)
        if q is not None and getattr(q, 'bits', None):
            return int(q.bits)
    return 4


def train_qlora(student: SmallVLA, teacher: SmallVLA, data: Samples, *, steps: int,
                qbc_lambda: float = 0.0, tasks: Sequence[str] = (), onpolicy_rounds: int = 2,
                onpolicy_episodes: int = 40, onpolicy_seed: int = 50_000, rank: int = 8,
                alpha: float | None = None, lr: float = 5e-4, batch: int = 32,
                distance: str = 'l2', weights: np.ndarray | None = None,
                onpolicy_weight_fn: Callable[[Samples], np.ndarray] | None = None,
                seed: int = 0, device: str = 'cpu', precision: str = 'fp32',
                grad_accum: int = 1, activation_checkpointing: bool = False,
                checkpoint_dir: str | None = None, checkpoint_every: int = 0,
                resume: str | None = None, history: list | None = None,
                method: str | None = None) -> dict:
    """QLoRA fine-tuning of an INT4 student (see the module doc): `QAILTrainer` with
    `VLAHooks`. `method` None: qbc_lambda 0 = QAIL alone ('qat'), else QAIL+QBC with lambda;
    or any `TrainConfig` method ('qbc': QBC alone; 'lppd': distillation of the teacher's
    logits on D_FP's states; 'qail_wqbc' with `weights`), lambda = qbc_lambda (1 if 0).
    `weights`: per-sample wQBC weights of `data` (None = 1); `onpolicy_weight_fn` gives the
    weights of collected on-policy states. Returns training statistics.

    Under torchrun every rank holds the frozen INT4 backbone and the adapters train under
    DistributedDataParallel; `batch` is the global batch of a step whatever the number of
    processes (each rank its slice, in `grad_accum` micro-batches); each rank rolls out its own
    on-policy episodes. `precision` bf16 = autocast; `activation_checkpointing` recomputes the
    Llama's activations in the backward; checkpoints every `checkpoint_every` steps and on
    SIGTERM / SIGINT. `history`: a list that receives each step's losses (averaged over the
    ranks; keys l_qail, l_qbc). Progress goes to the loggers of this module and the trainer."""
    from qail_ros.qail.config import TrainConfig
    from qail_ros.qail.trainer import QAILTrainer
    if method is None:
        method, lam = ('qail_qbc' if qbc_lambda > 0 else 'qat'), qbc_lambda
    else:
        lam = qbc_lambda if qbc_lambda > 0 else 1.0
    weighting = 'wqbc' if method in ('qail_wqbc', 'sqil', 'qail+wqbc') else None
    if weighting and weights is None:
        from qail_ros.errors import ParameterError
        raise ParameterError(f'method {method!r} weights QBC per state: pass weights= (one per '
                             'sample of data, e.g. from image saliency of the teacher), or use '
                             'qail_qbc')
    config = TrainConfig(method=method, weighting=weighting, bits=f'w{weight_bits(student)}a16',
                         head='tokens', qbc_distance=distance, lam=lam, lr=lr,
                         steps=steps, batch_size=batch, weight_decay=0.0, grad_clip=1.0,
                         seed=seed, device=device, precision=precision, grad_accum=grad_accum,
                         checkpoint_dir=checkpoint_dir, checkpoint_every=checkpoint_every,
                         resume=resume, log_every=1, progress=False)
    hooks = VLAHooks(tasks=tasks, onpolicy_rounds=onpolicy_rounds,
                     onpolicy_episodes=onpolicy_episodes, onpolicy_seed=onpolicy_seed,
                     rank=rank, alpha=alpha, weights=weights,
                     onpolicy_weight_fn=onpolicy_weight_fn,
                     activation_checkpointing=activation_checkpointing)
    t0 = time.perf_counter()
    trainer = QAILTrainer(teacher, config, data, hooks=hooks)
    result = trainer.train(student)
    if history is not None:
        history.extend(result.history)
    qail = [r['l_qail'] for r in result.history if 'l_qail' in r]
    qbc = [r['l_qbc'] for r in result.history if 'l_qbc' in r]
    return {'steps': steps, 'method': config.canonical_method, 'qbc_lambda': qbc_lambda,
            'rank': rank, 'lr': lr,
            'final_qail': float(np.mean(qail[-100:])) if qail else None,
            'final_qbc': float(np.mean(qbc[-100:])) if qbc else None,
            'onpolicy_states': hooks.stats['onpolicy_states'],
            'onpolicy_success': hooks.stats['onpolicy_success'],
            'trainable_params': int(sum(p.numel() for p in hooks.params)),
            'world': trainer.world, 'seconds': time.perf_counter() - t0}


def deploy(student: SmallVLA) -> SmallVLA:
    """Swap the fake-quantized layers for torch's packed int4 CPU kernel (bf16 compute);
    LoRA adapters, if any, stay float beside them. In place; returns the student.

    INT3 / INT2 students run on the same kernel: their asymmetric codes [0, 7] / [0, 3] are a
    subset of the kernel's [0, 15], and the zero point is folded into its (scale, zero) pairs,
    so the kernel computes exactly the fake-quant weights (to bf16 rounding)."""
    from qail_ros import quant
    quant.deploy(student.model.language_model, 'integer')
    return student
