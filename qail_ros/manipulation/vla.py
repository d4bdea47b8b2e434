"""A small VLA of the OpenVLA architecture for the table-top tasks: data, training, rollouts.

    vla = SmallVLA.create(seed=0)                    # fused two-tower ViT + projector + Llama
    data, _ = rollouts('place', list(range(120)), None)       # scripted expert demos
    bc_train(vla, data, steps=3000)                  # cross-entropy on the 7 action tokens
    result = evaluate(vla.act, 'place', list(range(50)))      # closed loop, batched
    vla.save('runs/manip/fp')                        # an OpenVLA checkpoint directory

The model is qail_ros.openvla's OpenVLAModel (the same classes, parameter names and checkpoint
layout as openvla-7b, at a tiny size: 48x48 camera, 8-pixel patches, a 3-layer 128-wide Llama),
the prompt is OpenVLA's, actions are 256-bin tokens on the last vocabulary ids, and statistics
(q01/q99 per dimension, gripper unmasked) are stored under the `qail_tabletop` key of
norm_stats, so the saved directory loads in OpenVLAPolicy and the vla_policy node unchanged.

Batched decoding groups episodes by instruction (equal prompt lengths, no padding) and runs the
greedy 7-token decode with a KV cache, as OpenVLA's predict_action does for one frame.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import time
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import torch

from qail_ros.manipulation.tasks import ACTION_DIM, TabletopEnv, expert_action
from qail_ros.openvla.config import PROMPT_TEMPLATE

__all__ = ['UNNORM_KEY', 'SmallVLA', 'Samples', 'rollouts', 'bc_train', 'evaluate',
           'samples_from_dataset', 'stats_from', 'build_word_tokenizer']

UNNORM_KEY = 'qail_tabletop'

log = logging.getLogger(__name__)


@dataclasses.dataclass
class Samples:
    """States (images + instructions) with 7-DoF action labels; `source` names where each
    label came from ('expert' or 'fp')."""
    images: np.ndarray          # (N, H, W, 3) uint8
    instructions: list[str]
    actions: np.ndarray         # (N, 7) float32 in env units
    source: list[str]
    #: privileged scene state per sample (N, STATE_DIM) when simulated (TabletopEnv.state):
    #: the auxiliary target that teaches the vision towers where things are (see bc_train)
    states: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.instructions)

    @staticmethod
    def concat(parts: Iterable[Samples]) -> Samples:
        parts = [p for p in parts if len(p)]
        states = (np.concatenate([p.states for p in parts])
                  if all(p.states is not None for p in parts) else None)
        return Samples(np.concatenate([p.images for p in parts]),
                       sum((p.instructions for p in parts), []),
                       np.concatenate([p.actions for p in parts]),
                       sum((p.source for p in parts), []), states)


class SmallVLA:
    """OpenVLAModel + tokenizer + action statistics, with batched training and decoding."""

    def __init__(self, model, tokenizer, stats: dict):
        from qail_ros.openvla.action_tokenizer import ActionTokenizer
        self.model = model
        self.config = model.config
        self.tokenizer = tokenizer
        self.stats = stats
        self.action_tokenizer = ActionTokenizer(self.config.vocab_size, self.config.n_action_bins)
        self._ids: dict[str, list[int]] = {}

    @classmethod
    def create(cls, seed: int = 0, *, stats: dict | None = None, llm_hidden: int = 128,
               llm_layers: int = 3, patch_size: int = 8) -> SmallVLA:
        from qail_ros.openvla.modeling import OpenVLAModel
        from qail_ros.openvla.tiny import tiny_config
        cfg = tiny_config(image_size=48, patch_size=patch_size, llm_hidden=llm_hidden,
                          llm_layers=llm_layers, max_positions=256)
        stats = stats or default_stats()
        cfg.norm_stats = {UNNORM_KEY: {'action': stats}}
        cfg.raw['qail_ros_note'] = ('small OpenVLA-architecture policy of the qail_ros '
                                    'table-top benchmark (qail_ros.manipulation)')
        torch.manual_seed(seed)
        model = OpenVLAModel(cfg).init_random(seed, std=0.02)
        with torch.no_grad():      # fixed-frequency 2-D sin-cos start for the position tables
            for tower in (model.vision_backbone.featurizer,
                          model.vision_backbone.fused_featurizer):
                if tower is not None and tower.spec.no_embed_class:
                    tower.pos_embed.copy_(sincos_2d(tower.pos_embed.shape[-1],
                                                    tower.spec.image_size //
                                                    tower.spec.patch_size))
                elif tower is not None:
                    n = tower.spec.image_size // tower.spec.patch_size
                    tower.pos_embed[:, -n * n:].copy_(sincos_2d(tower.pos_embed.shape[-1], n))
        return cls(model, build_word_tokenizer(cfg.vocab_size), stats)

    # -- persistence: an OpenVLA checkpoint directory ---------------------------------------
    def save(self, path: str | Path) -> Path:
        from qail_ros.openvla.checkpoint import save_checkpoint
        path = Path(path)
        self.config.norm_stats = {UNNORM_KEY: {'action': self.stats}}
        save_checkpoint(self.model, path, shards=1)
        self.tokenizer.save(str(path / 'tokenizer.json'))
        (path / 'tokenizer_config.json').write_text(json.dumps({
            'tokenizer_class': 'PreTrainedTokenizerFast', 'bos_token': '<s>',
            'eos_token': '</s>', 'unk_token': '<unk>', 'pad_token': '<unk>',
            'model_max_length': 2048, 'add_bos_token': True,
            'clean_up_tokenization_spaces': False}, indent=2) + '\n')
        return path

    @classmethod
    def load(cls, path: str | Path, unnorm_key: str | None = UNNORM_KEY) -> SmallVLA:
        from tokenizers import Tokenizer
        from qail_ros.openvla.action_tokenizer import select_stats
        from qail_ros.openvla.checkpoint import load_model
        from qail_ros.openvla.config import read_config
        path = Path(path)
        cfg = read_config(path)
        model = load_model(path, dtype=torch.float32, config=cfg)
        if unnorm_key not in cfg.norm_stats and len(cfg.norm_stats) == 1:
            unnorm_key = None
        _, stats = select_stats(cfg.norm_stats, unnorm_key)
        return cls(model, Tokenizer.from_file(str(path / 'tokenizer.json')), stats)

    # -- inputs -----------------------------------------------------------------------------
    def prompt_ids(self, instruction: str) -> list[int]:
        """<BOS> + the prompt + the empty piece, as OpenVLAPolicy.prompt_ids."""
        ids = self._ids.get(instruction)
        if ids is None:
            ids = list(self.tokenizer.encode(PROMPT_TEMPLATE.format(instruction=instruction)).ids)
            empty = self.tokenizer.token_to_id('\u2581')
            if empty is not None and ids[-1] != empty:
                ids.append(empty)
            self._ids[instruction] = ids
        return ids

    def pixel_values(self, images: np.ndarray) -> torch.Tensor:
        """(B, H, W, 3) uint8 -> (B, 6, S, S): each tower's normalisation, stacked."""
        from qail_ros.openvla.config import tower_inputs
        x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 255
        return tower_inputs(x, self.config.vit_specs)

    def action_tokens(self, actions: np.ndarray) -> torch.Tensor:
        from qail_ros.openvla.action_tokenizer import normalize
        norm = np.clip(normalize(np.asarray(actions, np.float64), self.stats), -1.0, 1.0)
        return torch.as_tensor(self.action_tokenizer.encode(norm), dtype=torch.long)

    def tokens_to_actions(self, tokens: np.ndarray) -> np.ndarray:
        from qail_ros.openvla.action_tokenizer import unnormalize
        return unnormalize(self.action_tokenizer.decode(tokens), self.stats)

    # -- forward ----------------------------------------------------------------------------
    def teacher_forced_logits(self, images: np.ndarray, instructions: list[str],
                              tokens: torch.Tensor, model=None, hidden: list | None = None
                              ) -> torch.Tensor:
        """Logits (B, 7, V) that predict each of the 7 given action tokens from the image,
        the prompt and the previous action tokens (one forward, right-padded). `hidden`: a
        list that receives the Llama's last hidden states at those positions (B, 7, H)."""
        model = model or self.model
        dev = next(model.parameters()).device
        tokens = tokens.cpu()
        seqs = [self.prompt_ids(s) for s in instructions]
        n = tokens.shape[1]
        length = max(len(s) for s in seqs) + n
        pad = int(self.config.raw.get('pad_token_id', 0))
        ids = torch.full((len(seqs), length), pad, dtype=torch.long)
        for i, s in enumerate(seqs):
            ids[i, :len(s)] = torch.as_tensor(s)
            ids[i, len(s):len(s) + n] = tokens[i]
        emb = model.multimodal_embeddings(self.pixel_values(images).to(dev), ids.to(dev))
        lm = model.language_model
        states = lm.model(inputs_embeds=emb).last_hidden_state
        patches = emb.shape[1] - ids.shape[1]
        # the output at position p predicts token p + 1; action token j sits at
        # patches + len(prompt) + j in the embedded sequence
        start = torch.as_tensor([patches + len(s) - 1 for s in seqs])
        index = (start[:, None] + torch.arange(n)[None]).to(dev)
        picked = states.gather(1, index[..., None].expand(-1, -1, states.shape[-1]))
        if hidden is not None:
            hidden.append(picked)
        return lm.lm_head(picked)

    @torch.no_grad()
    def generate(self, images: np.ndarray, instructions: list[str], model=None
                 ) -> tuple[np.ndarray, np.ndarray]:
        """Greedy decode of 7 action tokens per sample (whole-vocabulary argmax, KV cache),
        batched per instruction; returns (tokens (B, 7), logits (B, 7, V))."""
        model = model or self.model
        b = len(instructions)
        tokens = np.zeros((b, ACTION_DIM), np.int64)
        logits_out = None
        groups: dict[str, list[int]] = {}
        for i, s in enumerate(instructions):
            groups.setdefault(s, []).append(i)
        dev = next(model.parameters()).device
        for instruction, idx in groups.items():
            ids = torch.as_tensor([self.prompt_ids(instruction)] * len(idx)).to(dev)
            toks, lg = model.generate_actions(self.pixel_values(images[idx]).to(dev), ids,
                                              ACTION_DIM)
            if logits_out is None:
                logits_out = np.zeros((b,) + tuple(lg.shape[1:]), np.float32)
            logits_out[idx] = lg.float().cpu().numpy()
            tokens[idx] = toks.cpu().numpy()
        return tokens, logits_out

    def act(self, images: np.ndarray, instructions: list[str], model=None) -> np.ndarray:
        tokens, _ = self.generate(images, instructions, model)
        return self.tokens_to_actions(tokens)


def sincos_2d(dim: int, grid: int) -> torch.Tensor:
    """(1, grid * grid, dim) 2-D sine-cosine position table (MAE's fixed embedding), the
    start of the learned pos_embed: a random ViT then knows where each patch is."""
    quarter = dim // 4
    omega = 1.0 / (100.0 ** (torch.arange(quarter, dtype=torch.float32) / max(quarter, 1)))
    ys, xs = torch.meshgrid(torch.arange(grid, dtype=torch.float32),
                            torch.arange(grid, dtype=torch.float32), indexing='ij')
    parts = []
    for pos in (xs.reshape(-1), ys.reshape(-1)):
        angle = pos[:, None] * omega[None]
        parts += [angle.sin(), angle.cos()]
    table = torch.cat(parts, dim=1)
    if table.shape[1] < dim:
        table = torch.cat([table, torch.zeros(table.shape[0], dim - table.shape[1])], dim=1)
    return table[None]


def build_word_tokenizer(vocab_size: int):
    """A word-level tokenizer (tokenizers library) for the prompt and the task vocabulary:
    about 20 tokens per prompt, as Llama's BPE gives for these sentences (a character-level
    one would give 80 and spend most of the compute on the prompt). <unk> <s> </s> and the
    empty piece first, then the words, then fillers; the last 256 ids are the action tokens.
    """
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from qail_ros.manipulation.tasks import COLORS, PLATES, TASKS, instruction_for
    from qail_ros.openvla.tiny import SPECIAL
    words: list[str] = []
    texts = [PROMPT_TEMPLATE.format(instruction=instruction_for(t, c, p)) for t in TASKS
             for c in COLORS for p in PLATES]
    for text in texts:
        for w, _ in pre_tokenizers.Whitespace().pre_tokenize_str(text):
            if w not in words and w not in SPECIAL:
                words.append(w)
    pieces = SPECIAL + words
    if vocab_size < len(pieces) + 256:
        raise ValueError(f'vocab_size {vocab_size} < {len(pieces) + 256}')
    pieces += [f'<extra_{i}>' for i in range(vocab_size - len(pieces))]
    tok = Tokenizer(models.WordLevel({p: i for i, p in enumerate(pieces)}, unk_token='<unk>'))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single='<s> $A', pair='<s> $A $B',
                                                       special_tokens=[('<s>', 1)])
    return tok


def samples_from_dataset(root: str | Path, split: str = 'train', *, camera: str | None = None,
                         source: str = 'fp') -> Samples:
    """A QAIL data set built from bags (`qail-ros dataset build`) as VLA training samples:
    the camera's frames, each sample's instruction (the data set's task strings) and its
    7-DoF action. Errors name what is missing and how to record it."""
    from qail_ros.dataset import QailDataset
    from qail_ros.errors import ParameterError
    ds = QailDataset(root, split=split)
    keys = ds.arrays.keys
    cams = sorted(k[len('observation.images.'):] for k in keys
                  if k.startswith('observation.images.'))
    if not cams:
        raise ParameterError(f'{root}: the data set has no camera images; a VLA needs them '
                             '(record the camera topic and map it under images: in the topic '
                             'map)')
    cam = camera or cams[0]
    if cam not in cams:
        raise ParameterError(f'{root}: no camera {cam!r}; it has {cams}')
    images = ds.arrays.column(f'observation.images.{cam}')[ds.indices]
    actions = ds.arrays.column('action')[ds.indices].astype(np.float32)
    if actions.ndim != 2 or actions.shape[1] != ACTION_DIM:
        raise ParameterError(f'{root}: actions have shape {actions.shape[1:]}, a VLA needs '
                             f'{ACTION_DIM} (end-effector delta xyz, rpy, gripper): map '
                             "vla_policy's `action` topic (Float32MultiArray, 7 values; "
                             'unstamped, so `pairing: receive_time`) or another 7-DoF command '
                             'as the action in the topic map')
    tasks = list(ds.tasks)
    task_ids = ds.arrays.column('task_index')[ds.indices]
    instructions = [tasks[int(i)] for i in task_ids]
    if any(not t for t in instructions):
        raise ParameterError(f'{root}: some samples have no instruction; record the '
                             'instruction topic (std_msgs/String) with the camera')
    return Samples(np.ascontiguousarray(images), instructions, actions,
                   [source] * len(instructions))


def default_stats() -> dict:
    """Normalisation statistics before data is seen (the expert's actions lie in [-1, 1];
    rotations are always 0; the gripper is not normalised, as in OpenVLA's statistics)."""
    return {'q01': [-1.0, -1.0, -1.0, 0.0, 0.0, 0.0, -1.0],
            'q99': [1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 1.0],
            'mask': [True, True, True, True, True, True, False]}


def stats_from(actions: np.ndarray) -> dict:
    """q01 / q99 per dimension of recorded actions (OpenVLA's statistics), gripper unmasked."""
    a = np.asarray(actions, np.float64)
    return {'q01': np.quantile(a, 0.01, axis=0).round(6).tolist(),
            'q99': np.quantile(a, 0.99, axis=0).round(6).tolist(),
            'mean': a.mean(0).round(6).tolist(), 'std': a.std(0).round(6).tolist(),
            'mask': [True] * (ACTION_DIM - 1) + [False]}


# -- data collection and closed-loop evaluation ------------------------------------------------
Policy = Callable[[np.ndarray, list[str]], np.ndarray]


def rollouts(task: str, seeds: list[int], policy: Policy | None, *,
             label: Policy | str | None = None,
             noise: float = 0.0, rng_seed: int = 0, record: bool = True,
             progress: Callable[[int], None] | None = None) -> tuple[Samples, list[dict]]:
    """Run one episode per seed, all in lock-step (batched policy calls). `policy` None =
    the scripted expert acts. Recorded labels: label='expert' (the expert relabelling the
    learner's states), a policy (e.g. the FP teacher relabelling a student's), else (None)
    the action taken.
    `noise`: Gaussian noise added to the executed xyz (DART-style demonstrations; the label
    stays clean). Returns the samples and one result dict per episode."""
    rng = np.random.default_rng(rng_seed)
    envs = [TabletopEnv(task, seed=s) for s in seeds]
    obs = [e.observe() for e in envs]
    images, instructions, actions, states = [], [], [], []
    live = list(range(len(envs)))
    while live:
        ims = np.stack([obs[i].image for i in live])
        ins = [obs[i].instruction for i in live]
        if policy is None:
            taken = np.stack([expert_action(envs[i]) for i in live])
        else:
            taken = np.asarray(policy(ims, ins), np.float64)
        if record:
            lab = (np.stack([expert_action(envs[i]) for i in live]) if label == 'expert'
                   else taken if label is None else np.asarray(label(ims, ins)))
            images.append(ims)
            states.append(np.stack([envs[i].state() for i in live]))
            instructions += ins
            actions.append(lab.astype(np.float32))
        executed = taken.copy()
        if noise:
            executed[:, :3] += rng.normal(0.0, noise, (len(live), 3))
        for k, i in enumerate(live):
            obs[i], _ = envs[i].step(executed[k])
        live = [i for i in live if not envs[i].done]
        if progress:
            progress(len(live))
    results = [{'seed': s, 'success': bool(e.success), 'steps': e.steps,
                'instruction': e.instruction} for s, e in zip(seeds, envs)]
    source = 'expert' if policy is None or label == 'expert' else 'fp'
    if not record or not images:
        return Samples(np.zeros((0, 48, 48, 3), np.uint8), [], np.zeros((0, 7), np.float32),
                       []), results
    acts = np.concatenate(actions)
    return Samples(np.concatenate(images), instructions, acts, [source] * len(acts),
                   np.concatenate(states).astype(np.float32)), results


def evaluate(policy: Policy, task: str, seeds: list[int], batch: int = 50) -> dict:
    """Closed-loop success over one episode per seed, run in lock-step batches of `batch`
    episodes (so the first 50 episodes of a longer evaluation are computed exactly as a
    50-episode one). `outcomes` / `episode_steps`: per episode, in seed order (paired tests)."""
    t0 = time.perf_counter()
    results = []
    for k in range(0, len(seeds), batch):
        _, r = rollouts(task, seeds[k:k + batch], policy, record=False)
        results += r
    outcomes = [int(bool(r['success'])) for r in results]
    return {'task': task, 'episodes': len(results), 'success': float(np.mean(outcomes)),
            'successes': int(np.sum(outcomes)),
            'mean_steps': float(np.mean([r['steps'] for r in results])),
            'seconds': time.perf_counter() - t0, 'outcomes': outcomes,
            'episode_steps': [int(r['steps']) for r in results]}


class _BCStep(torch.nn.Module):
    """One BC forward as one module call (DistributedDataParallel reduces what it touched):
    the model's action-token logits and, with the auxiliary heads, their two regressions."""

    def __init__(self, vla: SmallVLA, aux: torch.nn.Module | None,
                 aux_task: torch.nn.Module | None):
        super().__init__()
        self.model, self.aux, self.aux_task = vla.model, aux, aux_task
        self.__dict__['vla'] = vla

    def forward(self, images, instructions, tokens):
        feats: list[torch.Tensor] = []
        hook = (self.model.vision_backbone.register_forward_hook(
            lambda _m, _i, out: feats.append(out)) if self.aux is not None else None)
        hidden: list[torch.Tensor] = []
        try:
            logits = self.vla.teacher_forced_logits(images, instructions, tokens,
                                                    model=self.model, hidden=hidden)
        finally:
            if hook is not None:
                hook.remove()
        if self.aux is None:
            return logits, None, None
        return logits, self.aux(feats[0].flatten(1)), self.aux_task(hidden[0][:, 0])


def bc_train(vla: SmallVLA, data: Samples, *, steps: int, batch: int = 32, lr: float = 3e-4,
             seed: int = 0, aux_weight: float = 1.0,
             every: tuple[int, Callable[[int], Samples | None]] | None = None,
             device: str = 'cpu', precision: str = 'fp32', grad_accum: int = 1,
             checkpoint_dir: str | None = None, checkpoint_every: int = 0,
             resume: str | None = None) -> list[float]:
    """Behaviour cloning of the whole FP model: cross-entropy on the 7 action tokens.

    With `data.states` (simulated data) and aux_weight > 0, two training-only linear heads
    add auxiliary regressions (docs/manipulation.md): one on the vision towers' patch
    features regresses the scene (gripper, blocks, plates: OpenVLA's towers come pretrained
    and know where things are, ours start random), one on the Llama's state at the first
    action position regresses where the instruction's block and plate are relative to the
    gripper (grounding the words). Measured: without them BC did not learn the task in a CPU
    budget (0 % success after 3000-4000 steps). The heads are not part of the checkpoint.
    `every` = (n, fn): fn(step) every n steps, the model in eval mode (progress checks);
    Samples it returns join the training data (DAgger: the policy's states, expert labels).
    The steps run in the one behaviour-cloning loop, `qail_ros.training.bc.fit` (torchrun:
    `batch` is the global batch, each rank its slice; bf16 autocast; accumulation;
    checkpoints and resume); progress goes to this module's logger ten times a run."""
    from qail_ros.qail.losses import qail_loss
    from qail_ros.training.bc import fit
    from qail_ros.training.distributed import GlobalBatches, setup
    dist = setup(device)
    cur = {'data': data, 'tokens': vla.action_tokens(data.actions), 'targets': None}
    params = list(vla.model.parameters())
    aux = aux_task = None
    if data.states is not None and aux_weight > 0:
        from qail_ros.manipulation.tasks import SCENE_DIM
        n_feat = vla.config.num_patches * vla.config.vision_dim
        aux = torch.nn.Linear(n_feat, SCENE_DIM)
        width = int(vla.config.text_config['hidden_size'])
        aux_task = torch.nn.Linear(width, data.states.shape[1] - SCENE_DIM)
        params += list(aux.parameters()) + list(aux_task.parameters())
        cur['targets'] = torch.as_tensor(data.states, dtype=torch.float32)
    step_module = _BCStep(vla, aux, aux_task).to(dist.device)
    batches = GlobalBatches(len(data), batch, dist, accum=grad_accum, seed=seed, mode='numpy')
    t0 = time.perf_counter()

    def loss_fn(model, idx, step):
        idx = idx.numpy()
        d, tokens = cur['data'], cur['tokens']
        logits, scene, task = model(d.images[idx], [d.instructions[i] for i in idx],
                                    tokens[idx])
        tok = tokens[idx].to(logits.device)
        loss = qail_loss(logits, tok, head='tokens')
        if scene is None:
            return loss, {'bc': loss}
        t = cur['targets'][idx].to(logits.device)
        aux_loss = (torch.nn.functional.mse_loss(scene.float(), t[:, :SCENE_DIM])
                    + torch.nn.functional.mse_loss(task.float(), t[:, SCENE_DIM:]))
        return loss + aux_weight * aux_loss, {'bc': loss, 'aux': aux_loss}

    def before_step(step: int) -> None:
        done = step - 1
        if not every or done == 0 or done % every[0] or done >= steps:
            return
        vla.model.eval()
        more = every[1](done)   # e.g. a closed-loop check, DAgger data
        vla.model.train()
        if more is not None and len(more):
            set_data(Samples.concat([cur['data'], more]))

    def set_data(d: Samples) -> None:
        cur.update(data=d, tokens=vla.action_tokens(d.actions))
        if aux is not None:
            cur['targets'] = torch.as_tensor(d.states, dtype=torch.float32)
        batches.resize(len(d))

    def log_fn(rec):
        step = rec['step']
        if step % max(steps // 10, 1) == 0:
            aux_msg = f' aux {rec["aux"]:.4f}' if 'aux' in rec else ''
            log.info('bc step %d/%d loss %.4f%s (%.0f s)', step, steps, rec['bc'], aux_msg,
                     time.perf_counter() - t0)

    # DAgger data grows the data set: the trainer state keeps it, so a resumed run has it too
    run = fit(step_module, loss_fn, batches, steps=steps, lr=lr, dist=dist, params=params,
              weight_decay=0.01, schedule='warmup_cosine', final_lr=0.1, grad_clip=1.0,
              precision=precision, checkpoint_dir=checkpoint_dir,
              checkpoint_every=checkpoint_every, resume=resume, log_every=1,
              before_step=before_step, find_unused_parameters=True, log_fn=log_fn,
              trainer_state=(lambda: {'data': cur['data']}, lambda st: set_data(st['data'])))
    vla.model.eval()
    return [r['bc'] for r in run.history]
