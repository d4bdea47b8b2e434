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

import bisect
import dataclasses
import hashlib
import json
import logging
import math
import os
import struct
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from qail_ros.dataset.topic_map import TopicMap
from qail_ros.errors import BagError, ParameterError

__all__ = ['build_dataset', 'find_bags', 'MANIFEST', 'FORMAT']

log = logging.getLogger('qail_ros.dataset')

MANIFEST = 'manifest.json'
FORMAT = 'qail_ros.dataset/1'
_STAMP = struct.Struct('<iI')
_STAMP_BE = struct.Struct('>iI')


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


def _cdr_stamp(data: bytes, offset: int = 4) -> int:
    """header.stamp of a stamped message from its CDR bytes (Header is the first field;
    offset 8 for a ROS 1 Header, whose uint32 seq comes first)."""
    sec, nsec = (_STAMP if data[1] == 1 else _STAMP_BE).unpack_from(data, offset)
    return sec * 1_000_000_000 + nsec


def _stamp_offset(reader) -> int:
    return 8 if reader.storage == 'rosbag1' else 4


@dataclasses.dataclass
class _Bag:
    path: Path
    reader: Any
    facts: Any          # EpisodeInfo or None
    tmap: TopicMap
    source: dict


@dataclasses.dataclass
class _Episode:
    key: tuple
    bags: list
    facts: Any
    dropped: str = ''


# ------------------------------------------------------------------------------------------
# per episode
# ------------------------------------------------------------------------------------------
def _latest_at_or_before(stamps: list[int], values: list, stamp: int, max_gap_ns: int | None):
    i = bisect.bisect_right(stamps, stamp) - 1
    if i < 0 or (max_gap_ns is not None and stamp - stamps[i] > max_gap_ns):
        return None
    return values[i]


def _match(stamps: list[int], stamp: int, tolerance_ns: int) -> int | None:
    """The stamp in sorted `stamps` equal to `stamp`, else the nearest within tolerance."""
    i = bisect.bisect_left(stamps, stamp)
    if i < len(stamps) and stamps[i] == stamp:
        return stamp
    if tolerance_ns <= 0:
        return None
    near = [stamps[j] for j in (i - 1, i) if 0 <= j < len(stamps)]
    best = min(near, key=lambda x: abs(x - stamp), default=None)
    return best if best is not None and abs(best - stamp) <= tolerance_ns else None


def _resize(rgb: np.ndarray, size: tuple[int, int] | None) -> np.ndarray:
    if size is None or rgb.shape[:2] == tuple(size):
        return rgb
    from PIL import Image as PILImage
    return np.asarray(PILImage.fromarray(rgb).resize((size[1], size[0]), PILImage.BILINEAR))


def _read_episode(ep: _Episode, tmap: TopicMap, counters: dict) -> dict[str, Any] | None:
    """Samples of one episode as arrays (None when it yields none)."""
    from qail_ros import image as im
    from qail_ros import policy_io
    from qail_ros.dataset.extract import to_vector
    from qail_ros.recording import stamp_of

    gap = int(tmap.max_gap_ms * 1e6)
    image_topics = list(tmap.images.values())
    img_index: dict[str, list[tuple[int, int, int]]] = {t: [] for t in image_topics}
    actions: dict[str, list[tuple[int | None, int, np.ndarray]]] = {t: [] for t in tmap.action}
    series: dict[str, list[tuple[int, np.ndarray]]] = {t: [] for t in tmap.state + tmap.command}
    raw: dict[int, np.ndarray] = {}
    raw_shape: tuple = ()
    instructions: list[tuple[int, str]] = []
    for part, bag in enumerate(ep.bags):
        reader = bag.reader
        for topic, bag_t, data in reader.messages(image_topics, raw=True):
            img_index[topic].append((_cdr_stamp(data, _stamp_offset(reader)), bag_t, part))
        others = [t for t in tmap.topics() if t not in img_index]
        if not others:
            continue
        for topic, bag_t, msg in reader.messages(others):
            if topic in actions:
                actions[topic].append((stamp_of(msg), bag_t, to_vector(msg)))
            elif topic in series:
                series[topic].append((stamp_of(msg) or bag_t, to_vector(msg)))
            elif topic == tmap.raw_outputs:
                stamp, values = policy_io.raw_outputs_from_msg(msg)
                raw[stamp] = values.astype(np.float32).ravel()
                raw_shape = values.shape
            elif topic == tmap.instruction:
                instructions.append((bag_t, msg.data))
    pair = img_index[tmap.pair_topic]
    pair.sort(key=lambda x: x[0])
    frame_by_stamp = {s: (bt, part) for s, bt, part in pair}
    first = tmap.action[0]
    samples: list[int] = []
    action_rows: dict[int, list[np.ndarray]] = {}
    if tmap.pairing == 'stamp':
        by_topic = {t: {s: v for s, _bt, v in rows if s is not None} for t, rows in
                    actions.items()}
        unstamped = sum(1 for rows in actions.values() for s, _b, _v in rows if s is None)
        if unstamped:
            counters['unstamped_actions'] += unstamped
        tol = int(tmap.stamp_tolerance_ms * 1e6)
        frame_stamps = sorted(frame_by_stamp)
        sorted_by_topic = {t: sorted(v) for t, v in by_topic.items()}
        for s in sorted(by_topic[first]):
            frame = _match(frame_stamps, s, tol)
            if frame is None or frame in action_rows:
                counters['actions_without_frame'] += 1
                continue
            row = []
            for t in tmap.action:
                hit = _match(sorted_by_topic[t], s, tol)
                if hit is None:
                    break
                row.append(by_topic[t][hit])
            if len(row) != len(tmap.action):
                counters['actions_incomplete'] += 1
                continue
            if frame != s:
                counters['paired_within_tolerance'] += 1
            samples.append(frame)
            action_rows[frame] = row
        samples.sort()
        counters['frames_without_action'] += len(frame_by_stamp) - len(samples)
        if not samples and unstamped:
            raise BagError(f'{ep.bags[0].path}: the action topic(s) {tmap.action} carry no '
                           'stamps, so they cannot be paired by stamp; use `pairing: '
                           'receive_time` in the topic map (an approximation) or record a '
                           'stamped action (TwistStamped, policy_io arrays)')
    else:   # receive_time: the newest frame received before the action, within max_gap
        recv = sorted((bt, s) for s, (bt, _p) in frame_by_stamp.items())
        recv_t = [r[0] for r in recv]
        others = {t: ([bt for _s, bt, _v in rows], [v for _s, _bt, v in rows])
                  for t, rows in actions.items() if t != first}
        for _s, bt, value in sorted(actions[first], key=lambda r: r[1]):
            hit = _latest_at_or_before(recv_t, recv, bt, gap)
            if hit is None or hit[1] in action_rows:
                counters['actions_without_frame'] += 1
                continue
            row = [value]
            for t in tmap.action[1:]:
                v = _latest_at_or_before(others[t][0], others[t][1], bt, gap)
                if v is None:
                    break
                row.append(v)
            if len(row) != len(tmap.action):
                counters['actions_incomplete'] += 1
                continue
            action_rows[hit[1]] = row
        samples = sorted(action_rows)
        counters['frames_without_action'] += len(frame_by_stamp) - len(samples)
    # state / command at the frame
    vec_fields = {}
    for field, topics in (('observation.state', tmap.state),
                          ('observation.command', tmap.command)):
        if not topics:
            continue
        cols = []
        for t in topics:
            rows = sorted(series[t], key=lambda r: r[0])
            cols.append(([r[0] for r in rows], [r[1] for r in rows]))
        vec_fields[field] = cols
    kept, states = [], {f: [] for f in vec_fields}
    for s in samples:
        row_ok = True
        values = {}
        for field, cols in vec_fields.items():
            parts = [_latest_at_or_before(st, vals, s, gap) for st, vals in cols]
            if any(p is None for p in parts):
                row_ok = False
                break
            values[field] = np.concatenate(parts)
        if not row_ok:
            counters['samples_without_state'] += 1
            continue
        kept.append(s)
        for field, v in values.items():
            states[field].append(v)
    if not kept:
        return None
    n = len(kept)
    out: dict[str, Any] = {'stamps': np.asarray(kept, np.int64)}
    try:
        out['action'] = np.stack([np.concatenate(action_rows[s]) for s in kept]).astype(
            np.float32)
    except ValueError as exc:
        raise BagError(f'{ep.bags[0].path}: action vectors change length within the episode '
                       f'({exc}); every action message must have the same size') from None
    for field, rows in states.items():
        out[field] = np.stack(rows).astype(np.float32)
    if tmap.raw_outputs:
        width = max((v.size for v in raw.values()), default=0)
        arr = np.full((n, width), np.nan, np.float32)
        for i, s in enumerate(kept):
            v = raw.get(s)
            if v is not None and v.size == width:
                arr[i] = v
            else:
                counters['samples_without_raw_outputs'] += 1
        out['teacher.raw_outputs'] = arr
        out['_raw_shape'] = list(raw_shape)
    instr_t = [t for t, _x in sorted(instructions)]
    instr_v = [x for _t, x in sorted(instructions)]
    default_task = ep.facts.task if ep.facts is not None else ''
    out['tasks'] = [(_latest_at_or_before(instr_t, instr_v, frame_by_stamp[s][0], None)
                     or default_task) for s in kept]
    # pass 2: pixels of the frames that became samples
    for name, topic in tmap.images.items():
        if topic == tmap.pair_topic:
            want = {s: [i] for i, s in enumerate(kept)}
        else:
            rows = sorted(img_index[topic])
            st = [r[0] for r in rows]
            want: dict[int, list[int]] = {}
            for i, s in enumerate(kept):
                hit = _latest_at_or_before(st, st, s, gap)
                if hit is None:
                    raise BagError(f'{ep.bags[0].path}: camera {topic} has no frame within '
                                   f'{tmap.max_gap_ms:g} ms before sample stamp {s}; raise '
                                   'max_gap_ms in the topic map or drop that camera')
                want.setdefault(hit, []).append(i)
        arr = None
        filled = 0
        for bag in ep.bags:
            for _topic, _bt, data in bag.reader.messages(topic, raw=True):
                idx = want.pop(_cdr_stamp(data, _stamp_offset(bag.reader)), None)
                if idx is None:
                    continue
                msg = bag.reader.deserialize(data, topic)    # the bag's own definition
                rgb = _resize(np.ascontiguousarray(im.to_numpy(msg, desired='rgb8')),
                              tmap.image_size)
                if arr is None:
                    arr = np.zeros((n,) + rgb.shape, np.uint8)
                if rgb.shape != arr.shape[1:]:
                    raise BagError(f'{bag.path}: {topic} changes image size within the episode '
                                   f'({rgb.shape} vs {arr.shape[1:]}); set image_size in the '
                                   'topic map')
                for i in idx:
                    arr[i] = rgb
                    filled += 1
        if filled != n:
            raise BagError(f'{ep.bags[0].path}: {n - filled} frames of {topic} were indexed '
                           'but could not be read back')
        out[f'observation.images.{name}'] = arr
    return out


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
    opened: list[_Bag] = []
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
            opened.append(_Bag(path, reader, facts, tmap, source))
        maps = {json.dumps(b.tmap.as_dict(), sort_keys=True) for b in opened}
        if len(maps) > 1:
            raise ParameterError('the bags were recorded with different topics; build them '
                                 'separately or pass one --topic-map for all')
        tmap = opened[0].tmap
        # group parts into episodes
        groups: dict[tuple, _Episode] = {}
        for bag in opened:
            f = bag.facts
            key = (f.session, f.index) if f is not None and f.session else ('bag', str(bag.path))
            ep = groups.setdefault(key, _Episode(key, [], f))
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
