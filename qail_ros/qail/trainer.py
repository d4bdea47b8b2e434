"""The QAIL trainer: a quantized student fine-tuned from its frozen full-precision teacher.

    teacher  = pi_fp, frozen (eval mode, no gradients)
    student  = deepcopy(teacher), quantized in place with `qail_ros.quant.quantize_`
               (LSQ fake quantization for the trained methods, RTN for the PTQ baseline),
               its quantizers initialised from a calibration batch of D_QAIL
    each step: a batch (s, a) of D_QAIL ->
        L_QAIL = BC loss of student(s) on a                       (qat, qail_qbc, qail_wqbc)
        L_QBC  = D(student(s'), teacher(s')), s' = s plus states  (qbc, qail_qbc, qail_wqbc)
                 the student visited (on-policy QBC), weighted per state by alpha in {1, beta}
                 for wQBC / SIS-QRD
        L_LPPD = distillation of teacher(s) on the teacher's own states (lppd)
        Adam on L = L_QAIL + lambda * L_QBC

On-policy QBC: with a `collector` (for a simulator: roll out the student, return the states it
visited), the trainer collects every `onpolicy_every` steps, labels the states with the teacher
(its outputs are recomputed in every batch, so the label is always the frozen pi_fp), scores
them for wQBC with the same saliency and threshold, and keeps them in a bounded FIFO pool. This
is the paper's `s ~ pi_q` sampled DAgger-style.

One trainer for every model: what depends on the model (the student's forward and trainable
parameters, the teacher's relabelling, batches, rollouts) is a `StudentHooks` object;
`TensorHooks` (the default) is the above for a policy module on tensor rows (the physics MLP,
the packed CILRS), `qail_ros.manipulation.qail_vla.VLAHooks` the VLA's QLoRA students.

Distributed, precision, checkpoints: the steps run in `qail_ros.training.bc.fit` (the loop is
`qail_ros.training.distributed.TrainLoop`).
Under torchrun (WORLD_SIZE > 1) the process group is initialised there, the student is wrapped in
DistributedDataParallel, every step's global batch (`batch_size`, whatever the number of
processes) is drawn alike on every rank and each rank trains on its slice (in `grad_accum`
micro-batches), every rank collects its own on-policy episodes (whole episodes, its own seeds),
and only rank 0 logs, shows progress and writes checkpoints. A single process never touches
torch.distributed.
"""
from __future__ import annotations

import copy
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from qail_ros.qail.config import TrainConfig
from qail_ros.qail.data import SOURCE_FP
from qail_ros.qail.losses import lppd_loss, output_tensor, qail_loss, qbc_loss, total_loss
from qail_ros.qail.saliency import (canonical_weighting, compute_scores, importance_threshold,
                                    importance_weights, SISCache)

__all__ = ['QAILTrainer', 'StudentHooks', 'TensorHooks', 'StudentBatch', 'TrainResult',
           'make_student', 'default_quantize', 'quant_config_for', 'dist_info', 'output_gap']

log = logging.getLogger('qail_ros.qail')

#: (model, config, calibration inputs) -> quantized model (in place or new).
QuantizeFn = Callable[[nn.Module, TrainConfig, Tensor], nn.Module]
#: (student, round index) -> states (N, ...) the student visited.
Collector = Callable[[nn.Module, int], Tensor]


def dist_info() -> tuple[int, int, bool]:
    """(rank, world_size, distributed) from torchrun's environment; inits the group if needed."""
    from qail_ros.training.distributed import setup
    d = setup('cpu' if int(os.environ.get('WORLD_SIZE', '1')) <= 1 else 'auto')
    return d.rank, d.world, d.distributed


def _quant():
    """(quantize_, rtn_config, lsq_config) from qail_ros.quant (imported on first use)."""
    try:
        from qail_ros.quant import lsq_config, quantize_, rtn_config
    except ImportError:  # a package __init__ that does not re-export them (yet)
        from qail_ros.quant.api import quantize_
        from qail_ros.quant.config import lsq_config, rtn_config
    return quantize_, rtn_config, lsq_config


def quant_config_for(config: TrainConfig):
    """The qail_ros.quant config of a run: per-tensor RTN of weights and layer inputs
    (`WeightActivationRTN`, the paper's PTQ baseline) for ptq_rtn, per-tensor LSQ otherwise.
    """
    from qail_ros.qail.config import parse_bits
    _, rtn_config, lsq_config = _quant()
    w, a = parse_bits(config.bits)  # activations >= 16: weight-only
    if config.canonical_method == 'ptq_rtn':
        return rtn_config(w, a)
    return lsq_config(w, a)


def default_quantize(model: nn.Module, config: TrainConfig, calib: Tensor) -> nn.Module:
    """Quantize `model` in place with qail_ros.quant, quantizers initialised from `calib`.

    A trained method's LSQ steps start from LSQ's own init (2 mean|v| / sqrt(Qp), on `calib`
    for the inputs) by default; with `config.student_init == 'ptq'` they start at the
    per-tensor RTN ranges of the same batch (weights max|w| / Qp, inputs max|x| / Qp), so the
    student starts as the PTQ-RTN policy.
    """
    from qail_ros.qail.config import parse_bits
    quantize_, rtn_config, _ = _quant()
    ref = None
    if config.trains and config.student_init == 'ptq':
        ref = quantize_(copy.deepcopy(model), rtn_config(*parse_bits(config.bits)),
                        calibration=calib)
    quantize_(model, quant_config_for(config), calibration=calib)
    if ref is not None:
        _copy_steps(ref, model)
    return model


@torch.no_grad()
def _copy_steps(src: nn.Module, dst: nn.Module) -> None:
    """Copy the (per-tensor, symmetric) quantizer steps and signs of `src` into `dst`."""
    src_mods = dict(src.named_modules())
    for name, m in dst.named_modules():
        other = src_mods.get(name)
        for attr in ('weight_quant', 'input_quant'):
            q, r = getattr(m, attr, None), getattr(other, attr, None)
            if q is None or r is None or q.scale.shape != r.scale.shape:
                continue
            q.scale.data.copy_(r.scale)
            q.set_signed(bool(r.signed))
            q.initialized.fill_(True)


def make_student(teacher: nn.Module, config: TrainConfig, calib: Tensor,
                 quantize_fn: QuantizeFn | None = None) -> nn.Module:
    """A deep copy of the teacher, quantized (and calibrated on `calib`), trainable."""
    student = copy.deepcopy(teacher)
    for p in student.parameters():
        p.requires_grad_(True)
    out = (quantize_fn or default_quantize)(student, config, calib)
    return student if out is None else out


@dataclass
class TrainResult:
    """What a run produced: the student and the facts about its training."""

    student: nn.Module
    config: TrainConfig
    history: list[dict[str, float]] = field(default_factory=list)
    threshold: float | None = None
    onpolicy_states: int = 0
    seconds: float = 0.0

    def summary(self) -> dict[str, Any]:
        last = self.history[-1] if self.history else {}
        return {'method': self.config.canonical_method, 'bits': self.config.bits,
                'steps': self.config.steps if self.config.trains else 0,
                'seconds': round(self.seconds, 2),
                'threshold': self.threshold, 'onpolicy_states': self.onpolicy_states,
                'final': last}


@dataclass
class StudentBatch:
    """One micro-batch as a hook prepares it: what the student sees and how it is scored.

    inputs:    whatever `StudentHooks.forward` and `teacher_forward` take (a tensor of states,
               images + instructions + token prefixes ...); the first `n_labelled` states
               carry `labels` (L_QAIL), all of them are compared with the teacher (L_QBC).
    weights:   per-state wQBC weights of all states (None = 1).
    """

    inputs: Any
    labels: Tensor | None
    n_labelled: int
    weights: Tensor | None = None


class StudentHooks:
    """What a model family plugs into `QAILTrainer`: the student's forward, the teacher's
    relabelling, the batches and the on-policy rollouts. The losses, the optimizer, the loop,
    checkpoints and torchrun are the trainer's (`qail_ros.training.bc.fit`).

    `TensorHooks` is the policy-module case (MLP, packed CILRS); the VLA's QLoRA students are
    `qail_ros.manipulation.qail_vla.VLAHooks` (token cross-entropy, adapters only). The trainer
    sets `trainer` (in `bind`) and `batches` (the `GlobalBatches` of the run, before the first
    step: a hook that fills part of each batch from its pool sets `batches.size`).
    """

    #: fit() settings of this family
    optimizer: str = 'adam'
    schedule: str = 'constant'
    final_lr: float = 0.0
    sampling: str = 'epoch'
    frozen_local: bool = False
    find_unused_parameters: bool = True
    sync_buffers: bool = False

    def bind(self, trainer: QAILTrainer) -> None:
        self.trainer = trainer

    def setup_teacher(self, teacher: Any) -> Any:
        """The frozen teacher on the trainer's device (eval mode, no gradients)."""
        raise NotImplementedError

    def prepare(self, student: Any | None) -> Any:
        """The student to train (made from the teacher when None), on the trainer's device."""
        raise NotImplementedError

    def parameters(self, student: Any) -> list[Tensor]:
        """What the optimizer trains."""
        raise NotImplementedError

    def module(self, student: Any) -> nn.Module:
        """The module the loop calls (wrapped in DistributedDataParallel under torchrun)."""
        raise NotImplementedError

    def finish(self, student: Any) -> Any:
        """The student after training (eval mode)."""
        raise NotImplementedError

    def model_state(self, student: Any):
        """(get, set) of what a checkpoint keeps of the student; None = its state_dict."""
        return None

    def start(self, student: Any, n_data: int) -> int:
        """Before the steps: weights, pools. Returns the number of samples the batches draw."""
        return n_data

    def batch_seed(self) -> int:
        return self.trainer.config.seed

    def before_step(self, student: Any, step: int) -> None:
        """On-policy rounds: roll the student out, relabel with the teacher, pool."""

    def batch(self, idx: Tensor, step: int) -> StudentBatch:
        raise NotImplementedError

    def forward(self, model: nn.Module, batch: StudentBatch) -> tuple[Any, Any]:
        """(student output on the labelled states, student output on all states)."""
        raise NotImplementedError

    def teacher_forward(self, batch: StudentBatch) -> Any:
        """The frozen teacher's output on all states of the batch (the QBC / LPPD label)."""
        raise NotImplementedError

    def records(self) -> dict[str, Any]:
        """Extra scalars logged with every step."""
        return {}

    def state(self) -> dict[str, Any]:
        return {}

    def load_state(self, state: dict[str, Any]) -> None:
        pass


class TensorHooks(StudentHooks):
    """A policy module on tensor rows (the MLP, the packed CILRS): regression / distribution
    heads, a student quantized from the teacher (`make_student`), saliency weights (wQBC) and
    on-policy states from a `collector`, kept in a bounded FIFO pool and added to each batch.

    collector:   optional on-policy state source (see the module doc); used when
                 `config.onpolicy_every > 0` and the method has a QBC term.
    quantize_fn: how to quantize the student (default: qail_ros.quant via `default_quantize`).
    saliency_groups: for state inputs, lists of state dimensions scored together (e.g. one
                 group per observation key); None = one part per dimension.
    sis_cache:   optional SISCache; scores of D_QAIL are looked up / stored by sample id.
    """

    def __init__(self, *, collector: Collector | None = None,
                 quantize_fn: QuantizeFn | None = None,
                 saliency_groups: list[list[int]] | None = None,
                 sis_cache: SISCache | None = None):
        self.collector = collector
        self.quantize_fn = quantize_fn
        self.saliency_groups = saliency_groups
        self.sis_cache = sis_cache
        self.threshold: float | None = None
        self.data_weights: Tensor | None = None
        self.pool_obs: Tensor | None = None
        self.pool_weights: Tensor | None = None
        self.collected = 0
        self.index: Tensor | None = None
        self.n_extra = 0

    def bind(self, trainer: QAILTrainer) -> None:
        super().bind(trainer)
        self.config, self.data = trainer.config, trainer.data
        self.device = trainer.device
        self.gen = torch.Generator().manual_seed(self.config.seed * 1000 + trainer.rank)

    def batch_seed(self) -> int:
        return self.config.seed * 1000

    # -- the student ---------------------------------------------------------------------------
    def setup_teacher(self, teacher: nn.Module) -> nn.Module:
        teacher = teacher.to(self.device).eval()
        for p in teacher.parameters():
            p.requires_grad_(False)
        return teacher

    def prepare(self, student: nn.Module | None) -> nn.Module:
        torch.manual_seed(self.config.seed * 1000 + self.trainer.rank)
        if student is None:
            student = make_student(self.trainer.teacher, self.config, self._calibration(),
                                   self.quantize_fn)
        return student.to(self.device)

    def parameters(self, student: nn.Module) -> list[Tensor]:
        return [p for p in student.parameters() if p.requires_grad]

    def module(self, student: nn.Module) -> nn.Module:
        return student

    def finish(self, student: nn.Module) -> nn.Module:
        return student.eval()

    # -- data, weights, pool -------------------------------------------------------------------
    @property
    def is_image(self) -> bool:
        return self.data.obs.dim() == 4

    def _calibration(self) -> Tensor:
        n = min(self.config.calib_samples, len(self.data))
        idx = torch.randperm(len(self.data), generator=self.gen)[:n]
        return self.data.obs[idx].to(self.device)

    def _scores(self, obs: Tensor, ids=None, cache=None) -> Tensor:
        cfg = self.config
        if self.is_image:
            kw = dict(kind='image', perturbation=cfg.image_perturbation, grid=cfg.image_grid)
        else:
            flat = self.data.obs.float()
            kw = dict(kind='state', perturbation=cfg.state_perturbation, scale=cfg.state_scale,
                      mean=flat.mean(0), std=flat.std(0), groups=self.saliency_groups)
        return compute_scores(self.trainer.teacher, obs.to(self.device), ids=ids, cache=cache,
                              progress=cfg.progress and self.trainer.rank == 0, **kw).cpu()

    def prepare_weights(self) -> None:
        """SIS of D_QAIL under the teacher, T on a 10% subset, alpha per sample."""
        cfg = self.config
        if self.sis_cache is None and cfg.sis_cache:
            from pathlib import Path
            path = Path(cfg.sis_cache)
            self.sis_cache = SISCache.load(path) if path.is_file() else SISCache(
                meta=self._sis_meta())
            if self.sis_cache.meta and self.sis_cache.meta != self._sis_meta():
                from qail_ros.qail.config import TrainConfigError
                raise TrainConfigError(f'SIS cache {path} was made with {self.sis_cache.meta}, '
                                       f'this run scores with {self._sis_meta()}: delete the '
                                       'file or point sis_cache elsewhere')
        scores = self._scores(self.data.obs, ids=self.data.ids.tolist(), cache=self.sis_cache)
        if cfg.sis_cache and self.trainer.rank == 0:
            self.sis_cache.save(cfg.sis_cache)
        self.threshold = importance_threshold(scores, percentile=cfg.percentile,
                                              subset_fraction=cfg.subset_fraction, seed=cfg.seed)
        self.data_weights = importance_weights(scores, self.threshold, cfg.beta)

    def _sis_meta(self) -> dict[str, Any]:
        """How the scores are made: a cache made differently must not be reused."""
        cfg = self.config
        if self.is_image:
            return {'kind': 'image', 'perturbation': cfg.image_perturbation,
                    'grid': cfg.image_grid, 'n': len(self.data)}
        return {'kind': 'state', 'perturbation': cfg.state_perturbation,
                'scale': cfg.state_scale, 'groups': self.saliency_groups, 'n': len(self.data)}

    def _collect(self, student: nn.Module, round_index: int) -> int:
        """One on-policy round: states of the student, scored, appended to the bounded pool."""
        student.eval()
        with torch.no_grad():
            states = torch.as_tensor(self.collector(student, round_index), dtype=torch.float32)
        if states.numel() == 0:
            return 0
        weights = torch.ones(len(states))
        if self.threshold is not None:
            weights = importance_weights(self._scores(states), self.threshold, self.config.beta)
        if self.pool_obs is None:
            self.pool_obs, self.pool_weights = states, weights
        else:
            self.pool_obs = torch.cat([self.pool_obs, states])[-self.config.onpolicy_pool:]
            self.pool_weights = torch.cat([self.pool_weights,
                                           weights])[-self.config.onpolicy_pool:]
        return len(states)

    def start(self, student: nn.Module, n_data: int) -> int:
        cfg = self.config
        if canonical_weighting(cfg.resolved_weighting) == 'saliency':
            self.prepare_weights()
        self.onpolicy = cfg.uses_qbc and self.collector is not None and cfg.onpolicy_every > 0
        if cfg.canonical_method == 'lppd':
            index = torch.nonzero(self.data.source == SOURCE_FP).flatten()
            if len(index) == 0:  # no teacher rollouts: distil on every state there is
                index = torch.arange(len(self.data))
        else:
            index = torch.arange(len(self.data))
        self.index = index
        # on-policy states per micro-batch of this rank: its share of the global extra states
        n_extra = int(round(cfg.batch_size * cfg.onpolicy_fraction)) if self.onpolicy else 0
        self.n_extra = n_extra // (self.trainer.world * cfg.grad_accum) if n_extra else 0
        self.collected = 0
        return len(index)

    def before_step(self, student: nn.Module, step: int) -> None:
        every = self.config.onpolicy_every
        if self.onpolicy and (step == 1 or (step - 1) % every == 0):
            k = (step - 1) // every
            # each rank rolls out its own whole episodes (its own round of seeds)
            self.collected += self._collect(student, k * self.trainer.world + self.trainer.rank)

    def batch(self, idx: Tensor, step: int) -> StudentBatch:
        rows = self.index[idx]
        obs = torch.as_tensor(self.data.obs[rows]).to(self.device)
        act = torch.as_tensor(self.data.act[rows]).to(self.device)
        w = self.data_weights[rows] if self.data_weights is not None else None
        states = obs
        if self.n_extra and self.pool_obs is not None and len(self.pool_obs):
            pidx = torch.randint(len(self.pool_obs), (self.n_extra,), generator=self.gen)
            states = torch.cat([obs, self.pool_obs[pidx].to(self.device)])
            if w is not None:
                w = torch.cat([w, self.pool_weights[pidx]])
        return StudentBatch(states, act, len(obs), w)

    def forward(self, model: nn.Module, batch: StudentBatch) -> tuple[Any, Any]:
        out = model(batch.inputs)
        return _head_slice(out, batch.n_labelled), out

    def teacher_forward(self, batch: StudentBatch) -> Any:
        return self.trainer.teacher(batch.inputs)

    def records(self) -> dict[str, Any]:
        return {'onpolicy_states': self.collected}

    def state(self) -> dict[str, Any]:
        return {'pool_obs': self.pool_obs, 'pool_weights': self.pool_weights,
                'gen': self.gen.get_state(), 'collected': self.collected}

    def load_state(self, state: dict[str, Any]) -> None:
        self.pool_obs, self.pool_weights = state['pool_obs'], state['pool_weights']
        self.gen.set_state(state['gen'])
        self.collected = state['collected']


class QAILTrainer:
    """Fine-tune a quantized copy of `teacher` on `data` with the losses of `config.method`.

    The one QAIL trainer: QAIL / QBC / wQBC / LPPD / on-policy QBC for every model, the
    model-specific parts in a `StudentHooks` object (`hooks`): the student's forward and
    trainable parameters, the teacher's relabelling, batches, rollouts. Default: `TensorHooks`
    (a policy module on tensor rows: the MLP, the packed CILRS), built from `collector`,
    `quantize_fn`, `saliency_groups` and `sis_cache` (see there); the VLA's QLoRA students
    pass `qail_ros.manipulation.qail_vla.VLAHooks`.

    teacher:     the FP policy (for TensorHooks any nn.Module; a forward of a batch of
                 `data.obs`).
    data:        D_QAIL (`ImitationData` for TensorHooks; the hooks' own samples otherwise).
    """

    def __init__(self, teacher: Any, config: TrainConfig, data: Any, *,
                 collector: Collector | None = None, quantize_fn: QuantizeFn | None = None,
                 saliency_groups: list[list[int]] | None = None,
                 sis_cache: SISCache | None = None, hooks: StudentHooks | None = None):
        self.config = config
        self.data = data
        from qail_ros.training.distributed import setup
        self.dist = setup(config.device)
        self.device = self.dist.device
        self.rank, self.world, self.distributed = (self.dist.rank, self.dist.world,
                                                   self.dist.distributed)
        self.hooks = hooks or TensorHooks(collector=collector, quantize_fn=quantize_fn,
                                          saliency_groups=saliency_groups, sis_cache=sis_cache)
        self.hooks.bind(self)
        self.teacher = self.hooks.setup_teacher(teacher)
        self.history: list[dict[str, float]] = []

    # what the default hooks hold (the wQBC threshold and weights, the on-policy pool)
    threshold = property(lambda self: getattr(self.hooks, 'threshold', None))
    data_weights = property(lambda self: getattr(self.hooks, 'data_weights', None))
    pool_obs = property(lambda self: getattr(self.hooks, 'pool_obs', None))
    pool_weights = property(lambda self: getattr(self.hooks, 'pool_weights', None))
    collected = property(lambda self: getattr(self.hooks, 'collected', 0))

    def objective(self, s_lab: Any, labels: Tensor | None, s_out: Any, teacher_out,
                  weights: Tensor | None) -> tuple[Tensor, dict[str, Any]]:
        """The loss of `config.method` on one micro-batch: L_QAIL of the labelled outputs,
        L_QBC (or LPPD) against `teacher_out()` (computed without gradients when needed)."""
        cfg = self.config
        l_qail = l_qbc = None
        if cfg.canonical_method == 'lppd':
            with torch.no_grad():
                t_out = teacher_out()
            loss = lppd_loss(s_out, t_out, head=cfg.head, temperature=cfg.temperature)
            l_qbc = loss
        else:
            if cfg.uses_qail:
                l_qail = qail_loss(s_lab, labels, head=cfg.head)
            if cfg.uses_qbc:
                with torch.no_grad():
                    t_out = teacher_out()
                l_qbc = qbc_loss(s_out, t_out, distance=cfg.qbc_distance,
                                 temperature=cfg.temperature,
                                 weights=None if weights is None else weights.to(self.device))
            loss = total_loss(l_qail, l_qbc, cfg.lam)
        rec: dict[str, Any] = {}
        if l_qail is not None:
            rec['l_qail'] = l_qail
        if l_qbc is not None:
            rec['l_qbc'] = l_qbc
        return loss, rec

    # -- the run -------------------------------------------------------------------------------
    def train(self, student: Any | None = None) -> TrainResult:
        from qail_ros.training.bc import fit
        from qail_ros.training.distributed import GlobalBatches
        cfg, hooks = self.config, self.hooks
        t0 = time.perf_counter()
        student = hooks.prepare(student)
        if not cfg.trains or cfg.steps == 0:
            return TrainResult(hooks.finish(student), cfg, [], None, 0,
                               time.perf_counter() - t0)
        n = hooks.start(student, len(self.data))
        batches = GlobalBatches(n, cfg.batch_size, self.dist, accum=cfg.grad_accum,
                                seed=hooks.batch_seed(), mode=hooks.sampling)
        hooks.batches = batches     # a hook that fills part of each batch resizes it

        def before_step(step: int) -> None:
            hooks.before_step(student, step)

        def loss_fn(model: nn.Module, idx: Tensor, step: int):
            b = hooks.batch(idx, step)
            s_lab, s_out = hooks.forward(model, b)
            loss, rec = self.objective(s_lab, b.labels, s_out, lambda: hooks.teacher_forward(b),
                                       b.weights)
            return loss, {**hooks.records(), **rec}

        every = max(cfg.steps // 5, 1)

        def log_fn(rec: dict[str, float]) -> None:
            if rec['step'] % every == 0:
                log.info('%s %s step %d/%d: %s (%.0f s)', cfg.canonical_method, cfg.bits,
                         rec['step'], cfg.steps,
                         ' '.join(f'{k} {v:.4g}' for k, v in rec.items() if k != 'step'),
                         time.perf_counter() - t0)

        run = fit(hooks.module(student), loss_fn, batches, steps=cfg.steps, lr=cfg.lr,
                  dist=self.dist, params=hooks.parameters(student),
                  optimizer=hooks.optimizer, weight_decay=cfg.weight_decay,
                  schedule=hooks.schedule, final_lr=hooks.final_lr,
                  grad_clip=cfg.grad_clip, precision=cfg.precision,
                  checkpoint_dir=cfg.checkpoint_dir, checkpoint_every=cfg.checkpoint_every,
                  resume=cfg.resume, log_every=cfg.log_every,
                  progress=f'{cfg.canonical_method} {cfg.bits}' if cfg.progress else None,
                  before_step=before_step, log_fn=log_fn,
                  model_state=hooks.model_state(student),
                  trainer_state=(hooks.state, hooks.load_state),
                  frozen_local=hooks.frozen_local,
                  # a branched policy (CILRS) leaves the branches of commands absent from a
                  # batch, and its speed head, without gradients
                  find_unused_parameters=hooks.find_unused_parameters,
                  # the student's buffers (quantizer flags, folded BN) never change
                  sync_buffers=hooks.sync_buffers)
        self.history = run.history
        for rec in self.history:
            if 'onpolicy_states' in rec:
                rec['onpolicy_states'] = int(round(rec['onpolicy_states']))
        student = hooks.finish(student)
        seconds = time.perf_counter() - t0
        if self.rank == 0:
            log.info('%s %s: %d steps in %.1f s, %d on-policy states, last %s',
                     cfg.canonical_method, cfg.bits, cfg.steps, seconds, self.collected,
                     self.history[-1] if self.history else {})
        return TrainResult(student, cfg, self.history, self.threshold, self.collected, seconds)


def _head_slice(out: Any, n: int) -> Any:
    """The first n samples of a policy output (tensor, pair or distribution)."""
    if isinstance(out, Tensor):
        return out[:n]
    if isinstance(out, (tuple, list)):
        return type(out)(o[:n] for o in out)
    if isinstance(out, torch.distributions.Normal):
        return torch.distributions.Normal(out.loc[:n], out.scale[:n])
    if isinstance(out, torch.distributions.Categorical):
        return torch.distributions.Categorical(logits=out.logits[:n])
    raise TypeError(f'cannot slice policy outputs of type {type(out).__name__}')


@torch.no_grad()
def output_gap(student: nn.Module, teacher: nn.Module, obs: Tensor) -> float:
    """Mean L2 distance between student and teacher outputs on `obs` (a quick alignment check)."""
    s = output_tensor(student(obs)).float()
    t = output_tensor(teacher(obs)).float()
    return float((s - t).reshape(len(obs), -1).norm(dim=1).mean())
