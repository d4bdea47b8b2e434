"""One episode of a data set build: its bags -> sample arrays (qail_ros.dataset.builder).

`read_episode` pairs each action with the frame it was computed from and takes the other fields
at that frame (see qail_ros.dataset.builder); it runs in the builder's process or in the worker
processes of qail_ros.dataset.parallel, which reopen an episode's bags by path.
"""
from __future__ import annotations

import bisect
import dataclasses
import struct
from pathlib import Path
from typing import Any

import numpy as np

from qail_ros.dataset.topic_map import TopicMap
from qail_ros.errors import BagError

__all__ = ['EpisodeBag', 'Episode', 'read_episode']

_STAMP = struct.Struct('<iI')
_STAMP_BE = struct.Struct('>iI')


def _cdr_stamp(data: bytes, offset: int = 4) -> int:
    """header.stamp of a stamped message from its CDR bytes (Header is the first field;
    offset 8 for a ROS 1 Header, whose uint32 seq comes first)."""
    sec, nsec = (_STAMP if data[1] == 1 else _STAMP_BE).unpack_from(data, offset)
    return sec * 1_000_000_000 + nsec


def _stamp_offset(reader) -> int:
    return 8 if reader.storage == 'rosbag1' else 4


@dataclasses.dataclass
class EpisodeBag:
    path: Path
    reader: Any
    facts: Any          # EpisodeInfo or None
    tmap: TopicMap
    source: dict


@dataclasses.dataclass
class Episode:
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


def read_episode(ep: Episode, tmap: TopicMap, counters: dict) -> dict[str, Any] | None:
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
