"""Bags -> a training data set: safetensors shards + manifest.json (`qail-ros dataset build`).

One sample = one action and the exact observation it was computed from: the frame of the
pairing image topic whose header stamp equals the action's stamp (policy_io raw outputs too).
Other fields are taken at that frame: other cameras and state/command topics as their newest
message at or before the frame's stamp (within max_gap_ms), the instruction as the newest one
received before the frame (else the episode's task).

Layout of DATASET/:
    manifest.json                  sources (bag hashes), topic map, features (shape, dtype),
                                   episodes, splits, filters, statistics, shards
    data/shard-00000.safetensors   episode-major; keys:
        observation.images.<name>  (N, H, W, 3) uint8 rgb
        observation.state          (N, S) float32          (when the map has state topics)
        observation.command        (N, C) float32          (when the map has command topics)
        action                     (N, A) float32
        teacher.raw_outputs        (N, R) float32, NaN where the teacher published nothing
        episode_index, frame_index, sample_index, task_index, timestamp_ns   (N,) int64

Images are read in two passes (stamps first, pixels only for frames that become samples), so
a bag is never decoded whole; one episode's samples are held in memory while it is built.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from qail_ros.dataset.episode import Episode, EpisodeBag
from qail_ros.dataset.topic_map import TopicMap
from qail_ros.errors import BagError, ParameterError

__all__ = ['build_dataset', 'find_bags', 'MANIFEST', 'FORMAT']

log = logging.getLogger('qail_ros.dataset')

MANIFEST = 'manifest.json'
FORMAT = 'qail_ros.dataset/1'


# ------------------------------------------------------------------------------------------
# inputs
# ------------------------------------------------------------------------------------------
def _is_bag(path: Path) -> bool:
    if path.is_file():
        return path.suffix in ('.mcap', '.db3', '.bag')     # .bag: ROS 1
    return path.is_dir() and ((path / 'metadata.yaml').exists() or any(path.glob('*.mcap'))
                              or any(path.glob('*.db3')))


def find_bags(paths: Iterable[str | os.PathLike]) -> list[Path]:
    """Bag directories named, or found one level under a named directory (a recorder's
    output_dir)."""
    out: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if not path.exists():
            raise BagError(f'no bag at {path}: check the path')
        if _is_bag(path):
            out.append(path)
            continue
        found = sorted(p for p in path.iterdir() if _is_bag(p)) if path.is_dir() else []
        if not found:
            raise BagError(f'{path} is neither a bag nor a directory of bags')
        out.extend(found)
    return out


def _sha256(files: Sequence[Path]) -> str:
    digest = hashlib.sha256()
    for file in files:
        with open(file, 'rb') as f:
            for block in iter(lambda: f.read(1 << 22), b''):
                digest.update(block)
    return f'sha256:{digest.hexdigest()}'


# ------------------------------------------------------------------------------------------
# statistics
# ------------------------------------------------------------------------------------------
def vector_stats(values: np.ndarray) -> dict[str, list[float]]:
    """Per-dimension mean/std/min/max/q01/q99 (OpenVLA's normalisation statistics)."""
    v = np.asarray(values, dtype=np.float64)
    if v.ndim == 1:
        v = v[:, None]
    v = v[~np.isnan(v).any(axis=1)]
    if v.shape[0] == 0:
        return {}
    return {'mean': v.mean(0).tolist(), 'std': v.std(0).tolist(), 'min': v.min(0).tolist(),
            'max': v.max(0).tolist(), 'q01': np.quantile(v, 0.01, axis=0).tolist(),
            'q99': np.quantile(v, 0.99, axis=0).tolist(), 'count': int(v.shape[0])}


# ------------------------------------------------------------------------------------------
# shards
# ------------------------------------------------------------------------------------------
class _ShardWriter:
    def __init__(self, root: Path, shard_frames: int):
        self.root = root
        self.shard_frames = shard_frames
        self.pending: dict[str, list[np.ndarray]] = {}
        self.pending_n = 0
        self.shards: list[dict] = []
        self.total = 0

    def add(self, arrays: dict[str, np.ndarray]) -> None:
        n = len(next(iter(arrays.values())))
        start = 0
        while start < n:
            take = min(n - start, self.shard_frames - self.pending_n)
            for key, arr in arrays.items():
                self.pending.setdefault(key, []).append(arr[start:start + take])
            self.pending_n += take
            start += take
            if self.pending_n >= self.shard_frames:
                self.flush()

    def flush(self) -> None:
        if not self.pending_n:
            return
        from safetensors.numpy import save_file
        name = f'data/shard-{len(self.shards):05d}.safetensors'
        tensors = {k: np.ascontiguousarray(np.concatenate(v)) for k, v in self.pending.items()}
        (self.root / 'data').mkdir(parents=True, exist_ok=True)
        save_file(tensors, str(self.root / name), metadata={'format': FORMAT})
        self.shards.append({'file': name, 'first_sample': self.total, 'samples': self.pending_n,
                            'bytes': (self.root / name).stat().st_size})
        self.total += self.pending_n
        self.pending, self.pending_n = {}, 0


# ------------------------------------------------------------------------------------------
# the builder
# ------------------------------------------------------------------------------------------
def _split(episode_ids: list[int], val_fraction: float, seed: int) -> dict[str, list[int]]:
    if not 0.0 <= val_fraction < 1.0:
        raise ParameterError(f'val_fraction must be in [0, 1), not {val_fraction}')
    ids = list(episode_ids)
    n_val = 0
    if val_fraction > 0 and len(ids) >= 2:
        n_val = min(len(ids) - 1, max(1, int(round(val_fraction * len(ids)))))
    order = np.random.default_rng(seed).permutation(len(ids))
    val = sorted(ids[i] for i in order[:n_val])
    return {'train': [i for i in ids if i not in val], 'val': val}


def build_dataset(bags: Iterable[str | os.PathLike], output: str | os.PathLike,
                  topic_map: TopicMap | str | os.PathLike | None = None,
                  val_fraction: float = 0.1, drop_failed: bool = False,
                  drop_incomplete: bool = False, image_size: tuple[int, int] | None = None,
                  shard_frames: int = 1000, seed: int = 0,
                  progress: Callable[[str], None] | None = None,
                  workers: int = 1) -> dict[str, Any]:
    """Build DATASET from bags; returns the manifest (also written to DATASET/manifest.json).

    Raises BagError naming the topic and the bag's topics when a bag lacks a mapped topic.
    A bag whose writer crashed is read up to its last complete chunk (and said so).
    """
    from qail_ros.bag import BagReader
    from qail_ros.dataset.extract import check_role_type
    from qail_ros.recording import EpisodeInfo
    say = progress or log.info
    out = Path(output)
    if out.exists() and any(out.iterdir()):
        raise ParameterError(f'{out} exists and is not empty; data sets are never overwritten: '
                             'choose a new -o directory or delete the old one')
    if shard_frames < 1:
        raise ParameterError(f'shard_frames must be >= 1, not {shard_frames}')
    if isinstance(topic_map, (str, os.PathLike)):
        topic_map = TopicMap.load(topic_map)
    if image_size is not None and topic_map is not None:
        topic_map.image_size = tuple(image_size)
    paths = find_bags(bags)
    if not paths:
        raise BagError('no bags given')
    opened: list[EpisodeBag] = []
    try:
        for path in paths:
            reader = BagReader(path)
            facts = EpisodeInfo.from_metadata(reader.custom_metadata)
            if topic_map is not None:
                tmap = topic_map
            elif facts is not None and facts.roles:
                tmap = TopicMap.from_roles(facts.roles, image_size)
                tmap.action = _stamped_actions(tmap.action, facts, path, say)
            else:
                reader.close()
                raise ParameterError(
                    f'bag {path} was not written by fp_recorder (no topic roles in its '
                    'metadata): pass --topic-map map.yaml naming its image and action topics '
                    f'(its topics: {sorted(reader.topics)})')
            missing = [(t, role) for t, role in tmap.topics().items() if t not in reader.topics]
            if missing:
                reader.close()
                have = ', '.join(f'{t} ({i.msgtype}, {i.count} msgs)'
                                 for t, i in sorted(reader.topics.items()))
                raise BagError(
                    f"bag {path} has no topic '{missing[0][0]}' (the topic map uses it for "
                    f'{missing[0][1]}); the bag has: {have}. Fix the topic map, or drop '
                    'this bag')
            try:
                for t, role in tmap.topics().items():
                    check_role_type(t, reader.topics[t].msgtype, role, str(path))
            except BagError:
                reader.close()
                raise
            files = reader.files
            source = {'path': str(path), 'storage': reader.storage,
                      'bytes': reader.size_bytes, 'sha256': _sha256(files),
                      'messages': reader.message_count, 'recovered': reader.recovered,
                      'episode': facts.as_dict() if facts else None}
            if reader.recovered:
                say(f'{path}: the bag was not closed (its writer crashed); read '
                    f'{reader.message_count} complete messages up to its last complete chunk')
            opened.append(EpisodeBag(path, reader, facts, tmap, source))
        maps = {json.dumps(b.tmap.as_dict(), sort_keys=True) for b in opened}
        if len(maps) > 1:
            raise ParameterError('the bags were recorded with different topics; build them '
                                 'separately or pass one --topic-map for all')
        tmap = opened[0].tmap
        # group parts into episodes
        groups: dict[tuple, Episode] = {}
        for bag in opened:
            f = bag.facts
            key = (f.session, f.index) if f is not None and f.session else ('bag', str(bag.path))
            ep = groups.setdefault(key, Episode(key, [], f))
            ep.bags.append(bag)
            if f is not None and (ep.facts is None or f.part >= ep.facts.part):
                ep.facts = f
        episodes = list(groups.values())
        for ep in episodes:
            ep.bags.sort(key=lambda b: b.facts.part if b.facts else 0)
            f = ep.facts
            if drop_failed and f is not None and f.success == 'false':
                ep.dropped = 'failed (success=false)'
            elif drop_incomplete and f is not None and not f.complete:
                ep.dropped = f'incomplete ({f.end_reason or "not closed"})'
        counters = {k: 0 for k in ('actions_without_frame', 'actions_incomplete',
                                   'paired_within_tolerance',
                                   'frames_without_action', 'unstamped_actions',
                                   'samples_without_state', 'samples_without_raw_outputs')}
        writer = _ShardWriter(out, shard_frames)
        out.mkdir(parents=True, exist_ok=True)
        ep_rows, tasks, all_actions, all_fields = [], {}, [], {}
        features: dict[str, dict] = {}
        raw_shape = None
        # the episodes' bags are read by `workers` processes (qail_ros.dataset.parallel)
        from qail_ros.dataset.parallel import read_episodes
        reads = read_episodes([e for e in episodes if not e.dropped], tmap, counters, workers)
        for ep in episodes:
            label = ep.bags[0].path.name
            if ep.dropped:
                say(f'{label}: dropped, {ep.dropped}')
                continue
            data = next(reads)
            if data is None:
                ep.dropped = 'no paired samples'
                say(f'{label}: no action paired with a frame; skipped')
                continue
            index = len(ep_rows)
            n = len(data['stamps'])
            task_ids = np.asarray([tasks.setdefault(t, len(tasks)) for t in data['tasks']],
                                  np.int64)
            raw_shape = data.pop('_raw_shape', raw_shape)
            stamps = data.pop('stamps')
            data.pop('tasks')
            arrays = dict(data)
            arrays.update({'episode_index': np.full(n, index, np.int64),
                           'frame_index': np.arange(n, dtype=np.int64),
                           'sample_index': np.arange(writer.total + writer.pending_n,
                                                     writer.total + writer.pending_n + n,
                                                     dtype=np.int64),
                           'task_index': task_ids, 'timestamp_ns': stamps})
            for key, arr in arrays.items():
                spec = {'dtype': str(arr.dtype), 'shape': list(arr.shape[1:])}
                if key in features and features[key] != spec:
                    raise BagError(f'{label}: {key} has shape {spec} but earlier episodes had '
                                   f'{features[key]}; set image_size / use the same robot')
                features[key] = spec
            first_sample = int(arrays['sample_index'][0])
            writer.add(arrays)
            all_actions.append(data['action'])
            for key in ('observation.state', 'observation.command', 'teacher.raw_outputs'):
                if key in data:
                    all_fields.setdefault(key, []).append(data[key])
            f = ep.facts
            dur = (stamps[-1] - stamps[0]) / 1e9 if n > 1 else 0.0
            ep_rows.append({
                'index': index, 'bags': [str(b.path) for b in ep.bags], 'frames': n,
                'first_sample': first_sample, 'duration_s': round(float(dur), 6),
                'start_ns': int(stamps[0]), 'end_ns': int(stamps[-1]),
                'success': f.success if f else 'unknown',
                'complete': f.complete if f else None,
                'end_reason': f.end_reason if f else '', 'task': data_task(task_ids, tasks),
                'policy_id': f.policy_id if f else '', 'precision': f.precision if f else '',
                'engine_hash': f.engine_hash if f else '',
                'recovered': any(b.reader.recovered for b in ep.bags),
                'recorder_pairing': f.pairing if f else {}})
            say(f'{label}: episode {index}, {n} samples')
        writer.flush()
        if not ep_rows:
            raise BagError('no samples: no episode had an action paired with a frame '
                           f'(counts: {counters}); check the topic map and the pairing')
        splits = _split([r['index'] for r in ep_rows], val_fraction, seed)
        for r in ep_rows:
            r['split'] = 'val' if r['index'] in splits['val'] else 'train'
        train = np.concatenate([a for a, r in zip(all_actions, ep_rows) if r['split'] ==
                                'train'])
        stats = {'action': vector_stats(train)}
        for key, arrs in all_fields.items():
            vals = np.concatenate([a for a, r in zip(arrs, ep_rows) if r['split'] == 'train'])
            stats[key] = vector_stats(vals)
        stats['num_transitions'] = int(len(train))
        stats['num_trajectories'] = len(splits['train'])
        if raw_shape is not None and 'teacher.raw_outputs' in features:
            features['teacher.raw_outputs']['source_shape'] = list(raw_shape)
        sources = {t: r for t, r in tmap.topics().items()}
        for key, spec in features.items():
            if key.startswith('observation.images.'):
                spec['source_topic'] = tmap.images[key.rsplit('.', 1)[-1]]
            elif key == 'action':
                spec['source_topic'] = tmap.action
            elif key == 'observation.state':
                spec['source_topic'] = tmap.state
            elif key == 'observation.command':
                spec['source_topic'] = tmap.command
            elif key == 'teacher.raw_outputs':
                spec['source_topic'] = tmap.raw_outputs
        dropped = [{'bags': [str(b.path) for b in e.bags], 'reason': e.dropped}
                   for e in episodes if e.dropped]
        manifest = {
            'format': FORMAT, 'created': time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime()),
            'sources': [b.source for b in opened], 'topic_map': tmap.as_dict(),
            'topics': sources, 'features': features,
            'frames': int(writer.total), 'episodes': ep_rows,
            'splits': splits | {'val_fraction': val_fraction, 'seed': seed},
            'filters': {'drop_failed': drop_failed, 'drop_incomplete': drop_incomplete,
                        'pairing': tmap.pairing, 'max_gap_ms': tmap.max_gap_ms,
                        'stamp_tolerance_ms': tmap.stamp_tolerance_ms,
                        'dropped_episodes': dropped},
            'pairing': counters, 'tasks': list(tasks),
            'stats': stats, 'stats_split': 'train', 'shards': writer.shards,
        }
        tmp = out / (MANIFEST + '.tmp')
        tmp.write_text(json.dumps(manifest, indent=1, default=_json_default))
        tmp.replace(out / MANIFEST)
        return manifest
    finally:
        for bag in opened:
            bag.reader.close()


def _stamped_actions(topics: list[str], facts, path: Path, say) -> list[str]:
    """Action topics of a recorder bag minus those whose messages all lacked a stamp (the
    recorder counted them): they cannot be paired, and would leave no sample."""
    counts = (facts.pairing or {}).get('topics', {})
    unstamped = [t for t in topics if counts.get(t, {}).get('received', 0) > 0
                 and counts[t].get('unstamped') == counts[t].get('received')]
    if unstamped and len(unstamped) < len(topics):
        say(f'{path}: leaving out action topic(s) {unstamped}: their messages carry no stamp, '
            'so they cannot be paired with a frame (name the topics in a --topic-map to '
            'choose)')
        return [t for t in topics if t not in unstamped]
    return topics


def data_task(task_ids: np.ndarray, tasks: dict[str, int]) -> str:
    """The task of an episode: its most frequent instruction."""
    names = {v: k for k, v in tasks.items()}
    values, counts = np.unique(task_ids, return_counts=True)
    return names[int(values[int(np.argmax(counts))])]


def _json_default(value):
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return None if math.isnan(value) else float(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f'{type(value).__name__} is not JSON serialisable')
