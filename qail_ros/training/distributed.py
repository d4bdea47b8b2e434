"""Data-parallel training for every qail_ros trainer: one module, PyTorch's own stack.

    dist = setup('auto')                       # torchrun's env -> process group (or 1 process)
    batches = GlobalBatches(len(data), 256, dist, accum=2, seed=0)
    loop = TrainLoop(student, opt, loss_fn, batches, steps=2000, dist=dist,
                     precision='bf16', checkpointer=Checkpointer('OUT/checkpoints', 500, dist),
                     resume='auto')
    result = loop.run()                        # history (rank-averaged losses), last step

- Processes: `setup` reads torchrun's WORLD_SIZE / RANK / LOCAL_RANK and initialises the
  default process group (gloo on CPU, NCCL on CUDA); without torchrun it is one process and
  torch.distributed is never touched. `--nnodes M --rdzv-backend c10d` needs nothing more.
- Data: `GlobalBatches` draws the global batch of each step from one generator that every rank
  seeds alike, so the samples of step k are the same whatever the world size; rank r trains on
  its slice (global / world samples), split into `accum` micro-batches. `episode_shard` gives a
  rank whole episodes instead (a lazily read data set: each rank opens only its shards).
- Model: `ddp` wraps it in DistributedDataParallel (only the trainable parameters are
  reduced; frozen ones, e.g. an INT4 backbone, can be left out of the start-up broadcast).
- `TrainLoop` runs the steps: micro-batches under `no_sync` but the last, autocast for bf16,
  gradient clipping, optimizer and scheduler steps, rank-averaged losses every `log_every`
  steps, a progress bar on rank 0, a checkpoint every K steps and on SIGTERM / SIGINT.
- `Checkpointer`: DIR/step-NNNNNNNN/{state.pt (model, optimizer, scheduler, sampler position,
  step, history), rank<R>.pt (each rank's RNG and trainer state)} written to a temporary
  directory and renamed, DIR/latest names the newest. `resume='auto'` continues from it after a
  torchrun elastic restart (TORCHELASTIC_RESTART_COUNT > 0); a path continues from there.

Only rank 0 logs, shows progress and writes files; `Dist.is_main` tells a trainer when it is it.
"""
from __future__ import annotations

import contextlib
import logging
import os
import random
import shutil
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from qail_ros.errors import ParameterError, QailRosError

__all__ = ['Dist', 'setup', 'teardown', 'resolve_device', 'autocast', 'ddp', 'unwrap',
           'GlobalBatches', 'episode_shard', 'Checkpointer', 'TrainLoop', 'LoopResult',
           'TrainingInterrupted', 'rng_state', 'set_rng_state', 'PRECISIONS', 'DEVICES',
           'enable_activation_checkpointing']

log = logging.getLogger('qail_ros.training')

PRECISIONS = ('fp32', 'bf16')
DEVICES = ('cpu', 'cuda', 'auto')


class TrainingInterrupted(QailRosError):
    """A run stopped by SIGTERM / SIGINT after writing a checkpoint (resume from it)."""

    def __init__(self, message: str, checkpoint: Path | None, step: int):
        super().__init__(message)
        self.checkpoint = checkpoint
        self.step = step


# -- processes and devices ---------------------------------------------------------------------
def resolve_device(name: str = 'auto', local_rank: int = 0) -> torch.device:
    """cpu | cuda | auto (cuda when there is one) -> this rank's device (cuda:LOCAL_RANK)."""
    name = str(name)
    base = name.split(':')[0]
    if base not in DEVICES:
        raise ParameterError(f'device {name!r}: use cpu, cuda or auto')
    if base == 'auto':
        base = 'cuda' if torch.cuda.is_available() else 'cpu'
    if base == 'cpu':
        return torch.device('cpu')
    if not torch.cuda.is_available():
        raise ParameterError(f'device {name!r} but torch sees no CUDA device (torch '
                             f'{torch.__version__}): use --device cpu, or install a CUDA build of '
                             'torch on a machine with a GPU')
    if ':' in name:
        return torch.device(name)
    return torch.device('cuda', local_rank % torch.cuda.device_count())


@dataclass
class Dist:
    """Where this process stands: rank, world size, local rank and its device."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device('cpu'))

    @property
    def distributed(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.distributed:
            import torch.distributed as tdist
            tdist.barrier()

    def mean(self, values: Tensor) -> Tensor:
        """The element-wise mean of `values` over the ranks (a copy on CPU)."""
        out = values.detach().float().to(self._comm_device()).clone()
        if self.distributed:
            import torch.distributed as tdist
            tdist.all_reduce(out)
            out /= self.world
        return out.cpu()

    def any(self, flag: bool) -> bool:
        """True on every rank when `flag` is true on one of them."""
        if not self.distributed:
            return bool(flag)
        import torch.distributed as tdist
        t = torch.tensor([1.0 if flag else 0.0], device=self._comm_device())
        tdist.all_reduce(t, op=tdist.ReduceOp.MAX)
        return bool(t.item() > 0)

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's `obj` on every rank (any picklable object)."""
        if not self.distributed:
            return obj
        import torch.distributed as tdist
        box = [obj]
        tdist.broadcast_object_list(box, src=0)
        return box[0]

    def _comm_device(self) -> torch.device:
        return self.device if self.device.type == 'cuda' else torch.device('cpu')


def setup(device: str = 'auto') -> Dist:
    """This process's `Dist`; under torchrun (WORLD_SIZE > 1) the default process group is
    initialised (once): gloo on CPU, NCCL on CUDA. A single process never touches
    torch.distributed."""
    world = int(os.environ.get('WORLD_SIZE', '1'))
    local_rank = int(os.environ.get('LOCAL_RANK', '0'))
    dev = resolve_device(device, local_rank)
    if world <= 1:
        return Dist(0, 1, 0, dev)
    import torch.distributed as tdist
    if dev.type == 'cuda':
        torch.cuda.set_device(dev)
    if not tdist.is_initialized():
        backend = 'nccl' if dev.type == 'cuda' else 'gloo'
        kwargs: dict[str, Any] = {'device_id': dev} if dev.type == 'cuda' else {}
        attempt = os.environ.get('TORCHELASTIC_RESTART_COUNT')
        if attempt is not None:
            # torchrun keeps one store across elastic restarts: the keys of the workers of an
            # earlier attempt (their dead gloo addresses) must not be read by the new ones
            from torch.distributed.rendezvous import rendezvous
            store, rank, size = next(rendezvous('env://'))
            kwargs.update(store=tdist.PrefixStore(f'qail_ros/attempt{attempt}', store),
                          rank=rank, world_size=size)
        tdist.init_process_group(backend=backend, **kwargs)
    return Dist(tdist.get_rank(), tdist.get_world_size(), local_rank, dev)


def teardown() -> None:
    """Destroy the default process group if there is one (end of a torchrun worker)."""
    import torch.distributed as tdist
    if tdist.is_available() and tdist.is_initialized():
        tdist.destroy_process_group()


def autocast(device: torch.device, precision: str = 'fp32'):
    """The context a forward runs in: nothing for fp32, torch.autocast(bfloat16) for bf16."""
    if precision not in PRECISIONS:
        raise ParameterError(f'precision {precision!r}: use one of {", ".join(PRECISIONS)}')
    if precision == 'fp32':
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def ddp(module: nn.Module, dist: Dist, *, frozen_local: bool = False,
        find_unused_parameters: bool = False, sync_buffers: bool = True) -> nn.Module:
    """`module` under DistributedDataParallel when distributed, else itself.

    frozen_local: leave parameters that do not train and all buffers out of DDP (no start-up
    broadcast, no per-step buffer sync): each rank holds the same frozen backbone already.
    Otherwise buffers (BatchNorm statistics, quantizer flags) are rank 0's at the start and,
    with `sync_buffers`, again before every forward (BatchNorm running statistics need it;
    constant buffers do not, and a model with many of them saves a broadcast per step)."""
    if not dist.distributed:
        return module
    from torch.nn.parallel import DistributedDataParallel
    if frozen_local:
        ignore = [n for n, p in module.named_parameters() if not p.requires_grad]
        ignore += [n for n, _ in module.named_buffers()]
        DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(module, ignore)
    ids = [dist.device.index] if dist.device.type == 'cuda' else None
    kwargs = {} if sync_buffers else {'forward_sync_buffers': False}
    return DistributedDataParallel(module, device_ids=ids,
                                   find_unused_parameters=find_unused_parameters, **kwargs)


def unwrap(module: nn.Module) -> nn.Module:
    return getattr(module, 'module', module) if type(module).__name__ == \
        'DistributedDataParallel' else module


def enable_activation_checkpointing(model: nn.Module) -> bool:
    """Recompute activations in the backward instead of keeping them: transformers models
    (the VLA's Llama) through their own switch, non-reentrant. Returns whether it applied."""
    fn = getattr(model, 'activation_checkpointing_enable', None)   # transformers >= 5
    if fn is not None:
        fn(activation_checkpointing_kwargs={'use_reentrant': False})
        return True
    fn = getattr(model, 'gradient_checkpointing_enable', None)
    if fn is None:
        return False
    fn(gradient_checkpointing_kwargs={'use_reentrant': False})
    return True


# -- random state ------------------------------------------------------------------------------
def rng_state() -> dict[str, Any]:
    state = {'python': random.getstate(), 'numpy': np.random.get_state(),
             'torch': torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state['cuda'] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state['python'])
    np.random.set_state(state['numpy'])
    torch.set_rng_state(state['torch'])
    if 'cuda' in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state['cuda'])


# -- data --------------------------------------------------------------------------------------
class GlobalBatches:
    """The sample indices of each step: a global batch drawn alike on every rank, this rank's
    slice of it, in `accum` micro-batches.

    mode 'epoch': an epoch is a permutation (torch generator seeded once); batches are its
    consecutive runs, the tail shorter than a batch is dropped. 'replacement': each batch is
    drawn uniformly with replacement (torch.randint). 'numpy': the same with a numpy
    Generator (rng.integers). With one process, 'epoch' is RandomSampler + BatchSampler
    (drop_last) and the others are the usual `randint(0, n, (batch,))` of a seeded generator.
    """

    MODES = ('epoch', 'replacement', 'numpy')

    def __init__(self, n: int, global_batch: int, dist: Dist | None = None, *, accum: int = 1,
                 seed: int = 0, mode: str = 'epoch'):
        self.dist = dist or Dist()
        if mode not in self.MODES:
            raise ParameterError(f'batch mode {mode!r}: use one of {", ".join(self.MODES)}')
        if accum < 1:
            raise ParameterError(f'gradient accumulation {accum} must be >= 1')
        if n < 1:
            raise ParameterError('no training samples')
        self.n, self.accum, self.mode, self.seed = int(n), int(accum), mode, seed
        self.global_batch = self._check(global_batch)
        if mode == 'numpy':
            self.rng = np.random.default_rng(seed)
        else:
            self.gen = torch.Generator().manual_seed(seed)
        self.epoch, self.pos = 0, 0
        #: the global batch of the next steps when not `global_batch` (a trainer that fills
        #: part of each batch from elsewhere, e.g. on-policy states); a multiple of world x accum
        self.size: int | None = None
        self._perm: Tensor | None = None
        self._perm_state: Tensor | None = None

    def _check(self, global_batch: int) -> int:
        unit = self.dist.world * self.accum
        if self.mode == 'epoch' and global_batch > self.n:
            fitted = max(unit, self.n // unit * unit)
            log.warning('batch %d > %d samples: an epoch-mode batch is at most the data set; '
                        'using %d', global_batch, self.n, fitted)
            global_batch = fitted
        if global_batch % unit:
            raise ParameterError(
                f'the global batch {global_batch} does not split into {self.dist.world} '
                f'processes x {self.accum} micro-batches: choose a batch size that is a '
                f'multiple of {unit} (or change --grad-accum / --nproc-per-node)')
        return int(global_batch)

    @property
    def local_batch(self) -> int:
        return self.global_batch // self.dist.world

    @property
    def micro_batch(self) -> int:
        return self.local_batch // self.accum

    def resize(self, n: int) -> None:
        """The data grew (DAgger): later draws index all `n` samples."""
        self.n = int(n)

    def next_global(self, size: int | None = None) -> Tensor:
        """The next global batch (every rank gets the same indices)."""
        size = size or self.size or self.global_batch
        if self.mode == 'numpy':
            return torch.as_tensor(self.rng.integers(0, self.n, size), dtype=torch.int64)
        if self.mode == 'replacement':
            return torch.randint(0, self.n, (size,), generator=self.gen)
        if self._perm is None or self.pos + size > len(self._perm):
            if self._perm is not None:
                self.epoch += 1
            self._perm_state = self.gen.get_state()
            self._perm = torch.randperm(self.n, generator=self.gen)
            self.pos = 0
        out = self._perm[self.pos:self.pos + size]
        self.pos += size
        return out

    def local(self, global_idx: Tensor) -> Tensor:
        """This rank's slice of a global batch."""
        k = len(global_idx) // self.dist.world
        return global_idx[self.dist.rank * k:(self.dist.rank + 1) * k]

    def next(self, size: int | None = None) -> list[Tensor]:
        """This rank's micro-batches of the next global batch."""
        mine = self.local(self.next_global(size))
        return list(mine.chunk(self.accum)) if self.accum > 1 else [mine]

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {'mode': self.mode, 'n': self.n, 'epoch': self.epoch,
                                 'pos': self.pos, 'size': self.size}
        if self.mode == 'numpy':
            state['rng'] = self.rng.bit_generator.state
        elif self.mode == 'replacement':
            state['gen'] = self.gen.get_state()
        else:
            state['perm_state'] = self._perm_state
            state['gen'] = self.gen.get_state()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.n, self.epoch, self.pos = state['n'], state['epoch'], state['pos']
        self.size = state.get('size')
        if self.mode == 'numpy':
            self.rng.bit_generator.state = state['rng']
        elif self.mode == 'replacement':
            self.gen.set_state(state['gen'])
        elif state.get('perm_state') is not None:
            self.gen.set_state(state['perm_state'])
            self._perm_state = state['perm_state']
            self._perm = torch.randperm(self.n, generator=self.gen)
            self.gen.set_state(state['gen'])


def episode_shard(lengths: list[int], dist: Dist) -> list[int]:
    """The episodes (indices into `lengths`) this rank trains on: whole episodes, contiguous,
    about the same number of samples per rank (each rank then reads only its own shards)."""
    if len(lengths) < dist.world:
        raise ParameterError(f'{len(lengths)} episodes cannot be shared by {dist.world} '
                             'processes: record more episodes or run fewer processes')
    total = max(1, sum(lengths))
    starts = np.cumsum([0] + list(lengths[:-1]))
    owner = [min(dist.world - 1, int(s) * dist.world // total) for s in starts]
    if len(set(owner)) < dist.world:  # very uneven episodes: deal them out instead
        owner = [i % dist.world for i in range(len(lengths))]
    return [i for i, r in enumerate(owner) if r == dist.rank]


# -- checkpoints -------------------------------------------------------------------------------
class Checkpointer:
    """Checkpoints in `directory`, every `every` steps (0 = only when stopped), keeping `keep`."""

    LATEST = 'latest'

    def __init__(self, directory: str | Path, every: int = 0, dist: Dist | None = None,
                 keep: int = 2):
        if every < 0:
            raise ParameterError(f'checkpoint every {every} steps: must be >= 0 (0 = off)')
        self.dir = Path(directory)
        self.every, self.keep = int(every), max(1, int(keep))
        self.dist = dist or Dist()

    def due(self, step: int) -> bool:
        return self.every > 0 and step % self.every == 0

    @classmethod
    def latest(cls, directory: str | Path) -> Path | None:
        """The newest complete checkpoint under `directory` (or `directory` if it is one)."""
        d = Path(directory)
        if (d / 'state.pt').is_file():
            return d
        pointer = d / cls.LATEST
        if pointer.is_file():
            path = d / pointer.read_text().strip()
            if (path / 'state.pt').is_file():
                return path
        steps = sorted(p for p in d.glob('step-*') if (p / 'state.pt').is_file()) \
            if d.is_dir() else []
        return steps[-1] if steps else None

    def save(self, step: int, state: dict[str, Any], rank_state: dict[str, Any]) -> Path:
        """Every rank calls this; rank 0 writes the shared state, each rank its own."""
        name = f'step-{step:08d}'
        final, tmp = self.dir / name, self.dir / (name + '.tmp')
        if self.dist.is_main:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        self.dist.barrier()
        torch.save(rank_state, tmp / f'rank{self.dist.rank}.pt')
        if self.dist.is_main:
            torch.save(state, tmp / 'state.pt.tmp')
            os.replace(tmp / 'state.pt.tmp', tmp / 'state.pt')
        self.dist.barrier()
        if self.dist.is_main:
            shutil.rmtree(final, ignore_errors=True)
            os.replace(tmp, final)
            pointer = self.dir / (self.LATEST + '.tmp')
            pointer.write_text(name + '\n')
            os.replace(pointer, self.dir / self.LATEST)
            old = sorted(p for p in self.dir.glob('step-*') if p.is_dir()
                         and not p.name.endswith('.tmp'))
            for p in old[:-self.keep]:
                shutil.rmtree(p, ignore_errors=True)
        self.dist.barrier()
        return final

    def load(self, path: Path) -> tuple[dict[str, Any], dict[str, Any] | None]:
        state = torch.load(path / 'state.pt', map_location='cpu', weights_only=False)
        mine = path / f'rank{self.dist.rank}.pt'
        rank_state = (torch.load(mine, map_location='cpu', weights_only=False)
                      if mine.is_file() else None)
        if rank_state is None:
            log.warning('%s has no state of rank %d (was it written by fewer processes?): '
                        'this rank starts its random streams afresh', path, self.dist.rank)
        return state, rank_state


def resolve_resume(resume: str | Path | None, checkpoint_dir: str | Path | None) -> Path | None:
    """The checkpoint to continue from: `resume` (a checkpoint or a directory of them;
    'auto' = the checkpoint directory's latest, if any), or after a torchrun elastic restart
    the latest of `checkpoint_dir`."""
    restarted = int(os.environ.get('TORCHELASTIC_RESTART_COUNT', '0') or 0) > 0
    if resume in (None, '', 'auto'):
        if checkpoint_dir is not None and (resume == 'auto' or restarted):
            return Checkpointer.latest(checkpoint_dir)
        return None
    path = Checkpointer.latest(resume)
    if path is None:
        raise ParameterError(f'--resume {resume}: no checkpoint there (a run writes them to '
                             'OUT/checkpoints/step-N with --checkpoint-every N, or when stopped '
                             'by SIGTERM / Ctrl-C)')
    return path


# -- stop signals ------------------------------------------------------------------------------
class _StopSignals:
    """SIGTERM / SIGINT set a flag (the step finishes, a checkpoint is written, the run ends)."""

    def __init__(self):
        self.signum: int | None = None
        self._old: dict[int, Any] = {}

    def __enter__(self) -> _StopSignals:
        if threading.current_thread() is threading.main_thread():
            for s in (signal.SIGTERM, signal.SIGINT):
                self._old[s] = signal.signal(s, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: stop now
        self.signum = signum

    def __exit__(self, *exc) -> None:
        for s, old in self._old.items():
            signal.signal(s, old)


# -- the loop ----------------------------------------------------------------------------------
#: (model as called (DDP-wrapped when distributed), micro-batch indices of this rank, step)
#: -> (loss of the micro-batch, named scalars to log)
LossFn = Callable[[nn.Module, Tensor, int], tuple[Tensor, dict[str, Any]]]


@dataclass
class LoopResult:
    history: list[dict[str, float]]
    step: int
    seconds: float
    resumed_from: Path | None = None
    checkpoint: Path | None = None


class TrainLoop:
    """The one training loop every qail_ros trainer runs (see the module doc).

    module:      the model whose trainable parameters the optimizer updates (wrapped in DDP
                 here); `loss_fn` calls it as `model(...)`.
    params:      the parameters to clip (default: those of the optimizer).
    model_state: (get, set) of what a checkpoint keeps of the model (default: state_dict; the
                 VLA keeps its adapters only).
    trainer_state: (get, set) of per-rank trainer state (on-policy pools, extra generators).
    before_step: called with the step number (1-based) before its batch (on-policy rounds).
    """

    def __init__(self, module: nn.Module, optimizer: torch.optim.Optimizer, loss_fn: LossFn,
                 batches: GlobalBatches, *, steps: int, dist: Dist | None = None,
                 scheduler: Any = None, params: list[Tensor] | None = None,
                 grad_clip: float | None = None, precision: str = 'fp32',
                 checkpointer: Checkpointer | None = None, resume: str | Path | None = None,
                 log_every: int = 50, progress: str | None = None,
                 before_step: Callable[[int], None] | None = None,
                 model_state: tuple[Callable[[], dict], Callable[[dict], Any]] | None = None,
                 trainer_state: tuple[Callable[[], dict], Callable[[dict], Any]] | None = None,
                 frozen_local: bool = False, find_unused_parameters: bool = False,
                 sync_buffers: bool = True,
                 log_fn: Callable[[dict[str, float]], None] | None = None):
        self.dist = dist or Dist()
        self.module = module
        self.model = ddp(module, self.dist, frozen_local=frozen_local,
                         find_unused_parameters=find_unused_parameters,
                         sync_buffers=sync_buffers)
        self.optimizer, self.scheduler, self.loss_fn = optimizer, scheduler, loss_fn
        self.batches, self.steps = batches, int(steps)
        self.params = params if params is not None else [
            p for g in optimizer.param_groups for p in g['params']]
        self.grad_clip, self.precision = grad_clip, precision
        autocast(self.dist.device, precision)  # validates the name
        self.checkpointer, self.resume = checkpointer, resume
        self.log_every, self.progress = max(1, int(log_every)), progress
        self.before_step = before_step
        self.model_state = model_state or (module.state_dict, module.load_state_dict)
        self.trainer_state = trainer_state
        self.log_fn = log_fn
        self.history: list[dict[str, float]] = []
        self.step = 0

    # -- checkpoints ------------------------------------------------------------------------
    def _state(self) -> dict[str, Any]:
        return {'step': self.step, 'model': self.model_state[0](),
                'optimizer': self.optimizer.state_dict(),
                'scheduler': self.scheduler.state_dict() if self.scheduler is not None else None,
                'batches': self.batches.state_dict(), 'history': self.history,
                'world': self.dist.world}

    def _rank_state(self) -> dict[str, Any]:
        return {'rng': rng_state(),
                'trainer': self.trainer_state[0]() if self.trainer_state else None}

    def save(self) -> Path | None:
        if self.checkpointer is None:
            return None
        return self.checkpointer.save(self.step, self._state(), self._rank_state())

    def _restore(self, path: Path) -> None:
        ck = self.checkpointer or Checkpointer(path.parent, 0, self.dist)
        state, rank_state = ck.load(path)
        self.model_state[1](state['model'])
        self.optimizer.load_state_dict(state['optimizer'])
        if self.scheduler is not None and state.get('scheduler') is not None:
            self.scheduler.load_state_dict(state['scheduler'])
        self.batches.load_state_dict(state['batches'])
        self.history = list(state['history'])
        self.step = int(state['step'])
        if rank_state is not None:
            set_rng_state(rank_state['rng'])
            if self.trainer_state and rank_state.get('trainer') is not None:
                self.trainer_state[1](rank_state['trainer'])
        if self.dist.is_main:
            log.info('resumed from %s at step %d', path, self.step)

    # -- the run ----------------------------------------------------------------------------
    def run(self) -> LoopResult:
        t0 = time.perf_counter()
        ckdir = self.checkpointer.dir if self.checkpointer is not None else None
        start = resolve_resume(self.resume, ckdir)
        if start is not None:
            self._restore(start)
        bar = None
        if self.progress and self.dist.is_main and self.step < self.steps:
            from tqdm.auto import tqdm
            bar = tqdm(total=self.steps, initial=self.step, desc=self.progress, unit='step',
                       leave=False)
        last: Path | None = None
        with _StopSignals() as stop:
            self.model.train()
            while self.step < self.steps:
                step = self.step + 1
                if self.before_step is not None:
                    self.before_step(step)
                    self.model.train()
                losses, records = self._one_step(step)
                self.step = step
                if step % self.log_every == 0 or step == self.steps:
                    self._log(step, losses, records, bar)
                if bar is not None:
                    bar.update(1)
                stopping = self.dist.any(stop.signum is not None)
                if self.checkpointer is not None and (stopping or self.checkpointer.due(step)
                                                      or step == self.steps):
                    last = self.save()
                if stopping:
                    if bar is not None:
                        bar.close()
                    name = signal.Signals(stop.signum).name if stop.signum else 'a signal'
                    where = (f'checkpoint {last}; continue with --resume {last.parent}'
                             if last is not None else 'no checkpoint directory was set')
                    raise TrainingInterrupted(f'stopped by {name} of rank '
                                              f'{"0" if stop.signum else "another"} at step '
                                              f'{step}: {where}', last, step)
        if bar is not None:
            bar.close()
        return LoopResult(self.history, self.step, time.perf_counter() - t0, start, last)

    def _one_step(self, step: int) -> tuple[Tensor, dict[str, Any]]:
        micro = self.batches.next()
        self.optimizer.zero_grad(set_to_none=True)
        total = torch.zeros(())
        records: dict[str, Any] = {}
        for k, idx in enumerate(micro):
            last = k == len(micro) - 1
            sync = contextlib.nullcontext() if last or not self.dist.distributed \
                else self.model.no_sync()
            with sync:
                with autocast(self.dist.device, self.precision):
                    loss, rec = self.loss_fn(self.model, idx, step)
                (loss.float() / len(micro)).backward()
            total = total + loss.detach().float().cpu() / len(micro)
            for key, v in rec.items():
                v = float(v.detach()) if isinstance(v, Tensor) else float(v)
                records[key] = records.get(key, 0.0) + v / len(micro)
        if self.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(self.params, self.grad_clip)
        self.optimizer.step()
        if self.scheduler is not None:
            self.scheduler.step()
        return total, records

    def _log(self, step: int, loss: Tensor, records: dict[str, Any], bar) -> None:
        keys = sorted(records)
        values = torch.tensor([float(loss)] + [records[k] for k in keys])
        values = self.dist.mean(values)
        rec = {'step': step, 'loss': float(values[0])}
        rec.update({k: float(v) for k, v in zip(keys, values[1:])})
        self.history.append(rec)
        if self.log_fn is not None and self.dist.is_main:
            self.log_fn(rec)
        if bar is not None:
            bar.set_postfix({k: f'{v:.4g}' for k, v in rec.items() if k != 'step'})
