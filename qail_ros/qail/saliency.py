"""Perturbation saliency, state-importance scores (SIS) and the wQBC / QRD weights made from them.

Saliency asks how much a policy's output moves when one part of its input is blurred away:
`S(p) = 0.5 * ||pi(x) - pi(phi(x, p))||^2` for each part p of the input (Greydanus et al. 2018).
The score of a state is the mean of S over its parts. The states whose score is in the top 20%
(threshold T = 80th percentile of the scores of a random 10% of the fine-tuning data) weigh
beta = 2 in the QBC term, the others 1. The QAIL paper calls this wQBC; SQIL calls the score SIS
and the weighted term QRD. It is one mechanism here (`importance_weights`), selected by the
trainer's `weighting` option ('wqbc', or its aliases 'sis' / 'qrd').

Image inputs (B, C, H, W), two perturbations over a grid of gh x gw points:
- `'blur'` (the QAIL paper, after Greydanus): a Gaussian-blurred copy of the image is blended in
  under a Gaussian mask centred on the grid point, `phi = I * (1 - M) + blur(I) * M`;
  score `0.5 * ||delta||^2` (sum over output elements).
- `'mean_patch'` (the SQIL code): the grid cell is replaced with the image's per-channel mean;
  score = mean over output elements of `delta^2`.

Low-dimensional state vectors (B, D) have no neighbourhood to blur, so a "part" is one state
dimension or a group of them (e.g. one dm_control observation key: positions, velocities). Two
perturbations, chosen to mirror the image ones:
- `'shift'` (default; the analogue of blurring a region): the group is moved by +/- `scale`
  data standard deviations; S = the mean of 0.5 * ||delta||^2 over the two directions. Scaling by
  the data std makes dimensions with different units comparable, and the two-sided average
  cancels the first-order asymmetry, so S measures the policy's local sensitivity to that part.
- `'mean'` (the analogue of the mean patch): the group is replaced with its data mean;
  S = 0.5 * ||delta||^2. It measures how far the state is from nominal along that part, as the
  policy sees it.
"""
from __future__ import annotations

import json
import math
from collections.abc import Callable, Hashable, Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from qail_ros.qail.config import IMAGE_PERTURBATIONS, STATE_PERTURBATIONS, WEIGHTINGS
from qail_ros.qail.losses import output_tensor

__all__ = ['IMAGE_PERTURBATIONS', 'STATE_PERTURBATIONS', 'WEIGHTINGS', 'canonical_weighting',
           'gaussian_blur', 'image_saliency', 'state_saliency', 'state_scores',
           'importance_threshold', 'importance_weights', 'compute_scores', 'SISCache']


def canonical_weighting(name: str) -> str:
    """'none' or 'saliency' for a weighting name ('wqbc', 'sis' and 'qrd' are one mechanism)."""
    if name not in WEIGHTINGS:
        raise ValueError(f'unknown weighting {name!r}: use one of {", ".join(WEIGHTINGS)} '
                         "('wqbc' = the QAIL paper's name, 'sis'/'qrd' = SQIL's; same weights)")
    return 'none' if name == 'none' else 'saliency'


def _half_sq(delta: Tensor) -> Tensor:
    return 0.5 * delta.reshape(delta.shape[0], -1).pow(2).sum(1)


def _mean_sq(delta: Tensor) -> Tensor:
    return delta.reshape(delta.shape[0], -1).pow(2).mean(1)


def _call(fn: Callable, x: Tensor) -> Tensor:
    return output_tensor(fn(x)).float()


def gaussian_blur(images: Tensor, sigma: float) -> Tensor:
    """Separable Gaussian blur of (B, C, H, W) images, reflect-padded, kernel radius 3 sigma."""
    if sigma <= 0:
        return images.clone()
    radius = max(1, int(math.ceil(3 * sigma)))
    radius = min(radius, images.shape[-1] - 1, images.shape[-2] - 1)
    xs = torch.arange(-radius, radius + 1, dtype=images.dtype, device=images.device)
    k = torch.exp(-0.5 * (xs / sigma) ** 2)
    k = k / k.sum()
    c = images.shape[1]
    x = torch.nn.functional.pad(images, (radius, radius, radius, radius), mode='reflect')
    x = torch.nn.functional.conv2d(x, k.view(1, 1, 1, -1).repeat(c, 1, 1, 1), groups=c)
    return torch.nn.functional.conv2d(x, k.view(1, 1, -1, 1).repeat(c, 1, 1, 1), groups=c)


def _grid(grid: int | tuple[int, int]) -> tuple[int, int]:
    gh, gw = (grid, grid) if isinstance(grid, int) else grid
    if gh < 1 or gw < 1:
        raise ValueError(f'saliency grid must be positive, got {grid}')
    return int(gh), int(gw)


@torch.no_grad()
def image_saliency(fn: Callable[[Tensor], Any], images: Tensor, *,
                   perturbation: str = 'blur', grid: int | tuple[int, int] = 8,
                   mask_sigma: float | None = None, blur_sigma: float | None = None,
                   points_per_call: int = 16) -> Tensor:
    """Saliency maps (B, gh, gw) of `fn` (images (B, C, H, W) -> outputs) over a grid.

    blur: grid points at the cell centres; mask sigma defaults to the cell size (Greydanus: a
    sigma-5 mask every 5 pixels) and blur sigma to 3 pixels per 84 (Greydanus' sigma_A = 3 on
    84 x 84 frames). `points_per_call` grid points are evaluated per call of `fn`.
    """
    if perturbation not in IMAGE_PERTURBATIONS:
        raise ValueError(f'unknown image perturbation {perturbation!r}: use one of '
                         f'{", ".join(IMAGE_PERTURBATIONS)}')
    if images.dim() != 4:
        raise ValueError(f'images must be (B, C, H, W), got shape {tuple(images.shape)}')
    b, c, h, w = images.shape
    gh, gw = _grid(grid)
    base = _call(fn, images)
    ch, cw = h / gh, w / gw
    if perturbation == 'blur':
        blurred = gaussian_blur(images, blur_sigma if blur_sigma is not None else 3.0 * h / 84)
        sig = mask_sigma if mask_sigma is not None else (ch + cw) / 2
        yy = torch.arange(h, dtype=images.dtype).view(h, 1)
        xx = torch.arange(w, dtype=images.dtype).view(1, w)
        score = _half_sq
    else:
        chan_mean = images.mean(dim=(2, 3), keepdim=True)
        score = _mean_sq
    points = [(i, j) for i in range(gh) for j in range(gw)]
    out = torch.zeros(b, gh * gw)
    for start in range(0, len(points), points_per_call):
        chunk = points[start:start + points_per_call]
        batch = []
        for i, j in chunk:
            if perturbation == 'blur':
                cy, cx = (i + 0.5) * ch - 0.5, (j + 0.5) * cw - 0.5
                m = torch.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * sig ** 2))
                batch.append(images * (1 - m) + blurred * m)
            else:
                y0, y1 = int(round(i * ch)), int(round((i + 1) * ch))
                x0, x1 = int(round(j * cw)), int(round((j + 1) * cw))
                p = images.clone()
                p[:, :, y0:y1, x0:x1] = chan_mean.expand(b, c, y1 - y0, x1 - x0)
                batch.append(p)
        pert = _call(fn, torch.cat(batch, 0)).reshape(len(chunk), b, *base.shape[1:])
        for k in range(len(chunk)):
            out[:, start + k] = score(pert[k] - base)
    return out.reshape(b, gh, gw)


def _groups(dim: int, groups: Sequence[Sequence[int]] | None) -> list[list[int]]:
    if groups is None:
        return [[d] for d in range(dim)]
    gs = [list(map(int, g)) for g in groups]
    if not gs or any(not g for g in gs) or any(d < 0 or d >= dim for g in gs for d in g):
        raise ValueError(f'state groups must be non-empty lists of indices in [0, {dim}), got '
                         f'{groups}')
    return gs


@torch.no_grad()
def state_saliency(fn: Callable[[Tensor], Any], states: Tensor, *, perturbation: str = 'shift',
                   scale: float = 0.5, mean: Tensor | None = None, std: Tensor | None = None,
                   groups: Sequence[Sequence[int]] | None = None) -> Tensor:
    """Saliency (B, G) of `fn` for state vectors (B, D), one column per part (dim or group).

    `mean` / `std` are the data statistics (D,) used by the perturbation; by default those of
    `states` itself (pass the data set's for consistent scores across batches).
    """
    if perturbation not in STATE_PERTURBATIONS:
        raise ValueError(f'unknown state perturbation {perturbation!r}: use one of '
                         f'{", ".join(STATE_PERTURBATIONS)}')
    if states.dim() != 2:
        raise ValueError(f'states must be (B, D), got shape {tuple(states.shape)}')
    b, d = states.shape
    gs = _groups(d, groups)
    if mean is None:
        mean = states.mean(0)
    if std is None:
        std = states.std(0) if b > 1 else torch.ones(d)
    mean = torch.as_tensor(mean, dtype=states.dtype).reshape(d)
    std = torch.as_tensor(std, dtype=states.dtype).reshape(d).clamp_min(1e-6)
    base = _call(fn, states)
    batch = []
    for g in gs:
        sel = torch.zeros(d, dtype=states.dtype)
        sel[g] = 1.0
        if perturbation == 'shift':
            batch += [states + scale * std * sel, states - scale * std * sel]
        else:
            batch.append(states * (1 - sel) + mean * sel)
    per_call = 2 if perturbation == 'shift' else 1
    pert = _call(fn, torch.cat(batch, 0)).reshape(len(gs), per_call, b, *base.shape[1:])
    out = torch.zeros(b, len(gs))
    for k in range(len(gs)):
        out[:, k] = torch.stack([_half_sq(pert[k, s] - base) for s in range(per_call)]).mean(0)
    return out


def state_scores(maps: Tensor) -> Tensor:
    """The state-importance score of each sample: the mean of its saliency map (B,)."""
    return maps.reshape(maps.shape[0], -1).mean(1)


def importance_threshold(scores: Tensor | Sequence[float], *, percentile: float = 80.0,
                         subset_fraction: float = 0.1, seed: int = 0) -> float:
    """T = the `percentile`-th percentile (linear interpolation) of the scores of a random
    `subset_fraction` of the samples (at least one): the paper's 80th percentile on 10%.
    """
    s = torch.as_tensor(scores, dtype=torch.float64).reshape(-1)
    if s.numel() == 0:
        raise ValueError('importance_threshold needs at least one score')
    if not 0 < subset_fraction <= 1 or not 0 <= percentile <= 100:
        raise ValueError(f'need 0 < subset_fraction <= 1 and 0 <= percentile <= 100, got '
                         f'{subset_fraction} and {percentile}')
    n = max(1, int(math.ceil(subset_fraction * s.numel())))
    if n < s.numel():
        gen = torch.Generator().manual_seed(int(seed))
        s = s[torch.randperm(s.numel(), generator=gen)[:n]]
    return float(torch.quantile(s, percentile / 100.0))


def importance_weights(scores: Tensor | Sequence[float], threshold: float,
                       beta: float = 2.0) -> Tensor:
    """alpha = beta where score >= threshold (the top states), else 1 (float32, like scores).

    `>=` as in the SQIL code; the QAIL paper writes `>`, which differs only on exact ties.
    """
    if beta < 1:
        raise ValueError(f'beta must be >= 1 (important states weigh more), got {beta}')
    s = torch.as_tensor(scores, dtype=torch.float32)
    return torch.where(s >= threshold, torch.tensor(float(beta)), torch.tensor(1.0))


class SISCache:
    """State-importance scores cached by sample id, on disk as JSONL or safetensors.

    JSONL (`*.jsonl`): one `{"id": ..., "score": ...}` object a line (ids: ints or strings), an
    optional first line `{"meta": {...}}` describing how the scores were made.
    safetensors (`*.safetensors`): tensors `ids` (int64) and `scores` (float32), meta in the
    file metadata; integer ids only.
    """

    def __init__(self, meta: dict[str, Any] | None = None):
        self.meta: dict[str, Any] = dict(meta or {})
        self.scores: dict[Hashable, float] = {}

    def __len__(self) -> int:
        return len(self.scores)

    def __contains__(self, key: Hashable) -> bool:
        return key in self.scores

    def update(self, ids: Iterable[Hashable], scores: Iterable[float]) -> None:
        for k, v in zip(ids, scores, strict=True):
            self.scores[_key(k)] = float(v)

    def get(self, ids: Iterable[Hashable]) -> Tensor:
        """Scores of `ids` (float32); raises KeyError naming the first id not cached."""
        out = []
        for k in ids:
            k = _key(k)
            if k not in self.scores:
                raise KeyError(f'no SIS score cached for sample id {k!r}: compute it with '
                               'compute_scores(..., cache=...) first')
            out.append(self.scores[k])
        return torch.tensor(out, dtype=torch.float32)

    def missing(self, ids: Iterable[Hashable]) -> list[Hashable]:
        return [_key(k) for k in ids if _key(k) not in self.scores]

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.suffix == '.safetensors':
            from safetensors.torch import save_file
            ids = list(self.scores)
            if not all(isinstance(k, int) for k in ids):
                raise ValueError('the safetensors SIS cache holds integer ids only: save as '
                                 '.jsonl for string ids')
            save_file({'ids': torch.tensor(ids, dtype=torch.int64),
                       'scores': torch.tensor([self.scores[k] for k in ids],
                                              dtype=torch.float32)},
                      str(path), metadata={'meta': json.dumps(self.meta)})
        else:
            with path.open('w') as f:
                if self.meta:
                    f.write(json.dumps({'meta': self.meta}) + '\n')
                for k, v in self.scores.items():
                    f.write(json.dumps({'id': k, 'score': v}) + '\n')
        return path

    @classmethod
    def load(cls, path: str | Path) -> SISCache:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f'no SIS cache at {path}: compute the scores first')
        cache = cls()
        if path.suffix == '.safetensors':
            from safetensors import safe_open
            from safetensors.torch import load_file
            with safe_open(str(path), framework='pt') as f:
                cache.meta = json.loads((f.metadata() or {}).get('meta', '{}'))
            t = load_file(str(path))
            cache.update(t['ids'].tolist(), t['scores'].tolist())
            return cache
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if not line.strip():
                continue
            obj = json.loads(line)
            if 'meta' in obj:
                cache.meta = obj['meta']
            elif 'id' in obj and 'score' in obj:
                cache.scores[_key(obj['id'])] = float(obj['score'])
            else:
                raise ValueError(f'{path}:{n}: expected {{"id": ..., "score": ...}}, got {line!r}')
        return cache


def _key(k: Hashable) -> Hashable:
    if isinstance(k, Tensor):
        k = k.item()
    if hasattr(k, 'item') and not isinstance(k, (str, bytes)):  # numpy scalars
        k = k.item()
    return k


def compute_scores(fn: Callable[[Tensor], Any], inputs: Tensor, *, kind: str = 'state',
                   ids: Sequence[Hashable] | None = None, cache: SISCache | None = None,
                   batch_size: int = 256, progress: bool = False, **saliency_kwargs) -> Tensor:
    """State-importance scores (N,) of `inputs` (N, ...) under `fn`, in batches.

    kind 'state' uses state_saliency, 'image' image_saliency (extra keyword arguments go to
    them). With a `cache` and `ids`, cached scores are reused and new ones stored.
    """
    if kind not in ('state', 'image'):
        raise ValueError(f"kind must be 'state' or 'image', got {kind!r}")
    n = inputs.shape[0]
    if ids is not None and len(ids) != n:
        raise ValueError(f'{len(ids)} ids for {n} inputs: pass one id per sample')
    scores = torch.full((n,), float('nan'))
    todo = list(range(n))
    if cache is not None and ids is not None:
        todo = [i for i in todo if _key(ids[i]) not in cache]
        done = [i for i in range(n) if _key(ids[i]) in cache]
        if done:
            scores[done] = cache.get([ids[i] for i in done])
    saliency = state_saliency if kind == 'state' else image_saliency
    starts = range(0, len(todo), batch_size)
    if progress:
        from tqdm.auto import tqdm
        starts = tqdm(starts, desc='saliency', unit='batch', leave=False)
    for start in starts:
        idx = todo[start:start + batch_size]
        s = state_scores(saliency(fn, inputs[idx], **saliency_kwargs))
        scores[idx] = s
        if cache is not None and ids is not None:
            cache.update([ids[i] for i in idx], s.tolist())
    return scores
