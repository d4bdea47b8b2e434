"""Calibration and held-out frames from a user's recorded data set, and the accuracy report.

    frames = recorded_frames('runs/ds', frames=100, holdout=32)
    frames.calibration[0]   # {'observation.images.image': uint8 (H, W, 3), 'observation.state'..}
    report = accuracy(engine, frames_as_feeds, reference_outputs)   # max / mean abs difference

INT8 engines are calibrated on `frames` samples of the data set's train split (evenly spaced,
so every episode contributes) and judged on `holdout` samples the calibration never saw: the
val split's episodes when the data set has one, else the frames between the calibration
frames. An architecture turns raw samples into its engine's inputs (CILRS: the camera image
and speed through `qail_ros.cilrs.config.preprocess_frame`, the MLP: `observation.state`).
"""
from __future__ import annotations

import dataclasses
import hashlib
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from qail_ros.errors import ParameterError

__all__ = ['RecordedFrames', 'recorded_frames', 'accuracy', 'reference_outputs',
           'time_engines', 'feeds_hash']

Feed = dict[str, np.ndarray]


@dataclasses.dataclass
class RecordedFrames:
    """Raw samples of a data set: `calibration` (train split) and `holdout` (never calibrated
    on); `source` names the data set and its manifest hash (for the engine manifests)."""

    calibration: list[dict[str, np.ndarray]]
    holdout: list[dict[str, np.ndarray]]
    source: dict[str, Any]
    keys: list[str]


def _even(indices: Sequence[int], n: int) -> list[int]:
    indices = list(indices)
    if n <= 0 or not indices:
        return []
    if n >= len(indices):
        return indices
    pick = np.linspace(0, len(indices) - 1, n).round().astype(int)
    return [indices[i] for i in pick]


def recorded_frames(root: str | Path, *, frames: int = 100, holdout: int = 32,
                    keys: Sequence[str] | None = None) -> RecordedFrames:
    """`frames` calibration samples and `holdout` held-out samples of the data set at `root`
    (a `qail-ros dataset build` output); `keys` limits the arrays read (default: all but the
    teacher outputs). A clear error when the data set has too few frames."""
    from qail_ros.dataset.builder import MANIFEST
    from qail_ros.dataset.reader import ShardedArrays
    if frames < 1 or holdout < 0:
        raise ParameterError(f'--frames must be >= 1 and the hold-out >= 0 (got {frames}, '
                             f'{holdout})')
    root = Path(root)
    arrays = ShardedArrays(root)
    n = len(arrays)
    if n < 2:
        raise ParameterError(f'data set {root} has {n} frame(s): calibration needs recorded '
                             'frames (record more, then `qail-ros dataset build`)')
    keys = list(keys) if keys else [k for k in arrays.keys if not k.startswith('teacher.')]
    missing = [k for k in keys if k not in arrays.keys]
    if missing:
        raise ParameterError(f'data set {root} has no {missing} (it has {arrays.keys})')
    val_eps = set((arrays.manifest.get('splits') or {}).get('val') or [])
    if val_eps and 'episode_index' in arrays.keys:
        episodes = arrays.column('episode_index').reshape(-1)
        train_idx = [i for i in range(n) if int(episodes[i]) not in val_eps]
        val_idx = [i for i in range(n) if int(episodes[i]) in val_eps]
    else:
        train_idx, val_idx = list(range(n)), []
    if not val_idx:                 # no val split: hold out the frames between calibration ones
        calib = _even(train_idx, min(frames, max(1, len(train_idx) // 2)))
        chosen = set(calib)
        rest = [i for i in train_idx if i not in chosen]
        held = _even(rest, holdout)
    else:
        calib = _even(train_idx, frames)
        held = _even(val_idx, holdout)
    digest = hashlib.sha256((root / MANIFEST).read_bytes()).hexdigest()
    source = {'dataset': str(root), 'dataset_manifest_sha256': digest,
              'calibration_frames': len(calib), 'holdout_frames': len(held),
              'holdout_from': 'val split' if val_idx else 'train frames not calibrated on'}
    return RecordedFrames(calibration=[arrays.sample(i, keys) for i in calib],
                          holdout=[arrays.sample(i, keys) for i in held], source=source,
                          keys=keys)


def feeds_hash(feeds: Sequence[Feed]) -> str:
    """Short hash of calibration feeds (part of an INT8 engine's cache key)."""
    h = hashlib.sha256()
    for feed in feeds:
        for name in sorted(feed):
            h.update(name.encode())
            h.update(np.ascontiguousarray(feed[name]).tobytes())
    return h.hexdigest()[:16]


def reference_outputs(fn: Callable[[Feed], dict[str, np.ndarray]],
                      feeds: Sequence[Feed]) -> list[dict[str, np.ndarray]]:
    return [{k: np.asarray(v, np.float32) for k, v in fn(f).items()} for f in feeds]


def accuracy(engine, feeds: Sequence[Feed], reference: Sequence[dict[str, np.ndarray]]
             ) -> dict[str, float]:
    """max and mean |engine - reference| over every output of every held-out feed."""
    diffs = []
    for feed, ref in zip(feeds, reference):
        out = engine.infer(feed)
        diffs += [np.abs(out[k].astype(np.float64) - ref[k]).ravel() for k in ref]
    d = np.concatenate(diffs) if diffs else np.zeros(1)
    return {'max_abs_diff': float(d.max()), 'mean_abs_diff': float(d.mean()),
            'frames': len(feeds)}


def time_engines(engines: dict[str, Any], feed: Feed, runs: int = 20,
                 warmup: int = 3) -> dict[str, dict[str, float]]:
    """Median / p90 / min wall ms and median CPU ms (process time: every thread of this
    process; time slices taken by other processes do not count, memory contention does)
    per engine, runs interleaved round-robin (load on a shared machine hits all alike)."""
    for e in engines.values():
        for _ in range(max(warmup, 1)):
            e.infer(feed)
    times: dict[str, list[float]] = {k: [] for k in engines}
    cpu: dict[str, list[float]] = {k: [] for k in engines}
    for _ in range(max(runs, 1)):
        for k, e in engines.items():
            c0, t0 = time.process_time(), time.perf_counter()
            e.infer(feed)
            times[k].append((time.perf_counter() - t0) * 1e3)
            cpu[k].append((time.process_time() - c0) * 1e3)
    return {k: {'ms': float(np.median(t)), 'p90_ms': float(np.percentile(t, 90)),
                'min_ms': float(np.min(t)), 'cpu_ms': float(np.median(cpu[k]))}
            for k, t in times.items()}
