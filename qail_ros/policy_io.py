"""What every policy node publishes beside its action, in standard ROS 2 messages.

The recorder (QBC needs the teacher's raw outputs) and the monitor (latency, energy per
inference) read these, so they are one contract, kept here:

  <node>/policy_timing  std_msgs/Float64MultiArray, one per inference
  <node>/raw_outputs    std_msgs/Float64MultiArray, one per inference (logits / distribution
                        parameters / the action head's output before post-processing)

Both carry the input's header stamp exactly: `layout.data_offset == 2` and the two leading
padding elements are (stamp.sec, stamp.nanosec), exact in float64. A generic consumer that honours
`data_offset` (as the MultiArrayLayout definition asks) sees only the values. `layout.dim[0].label`
is the comma-joined list of value names (timing) or the output name (raw outputs), and further
dims give the shape of raw outputs.

Timing values (TIMING_FIELDS): wall-clock start and end of the inference in seconds since the
epoch (float64: sub-microsecond resolution), latency and its parts in milliseconds, and the
number of camera frames the node has dropped so far (latest-frame policy).
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from qail_ros import messages

__all__ = ['TIMING_FIELDS', 'InferenceTiming', 'timing_to_msg', 'timing_from_msg',
           'raw_outputs_to_msg', 'raw_outputs_from_msg', 'labelled_values', 'values_by_label']

TIMING_FIELDS = ('start_s', 'end_s', 'latency_ms', 'preprocess_ms', 'inference_ms',
                 'postprocess_ms', 'age_ms', 'dropped_frames')


@dataclasses.dataclass
class InferenceTiming:
    """One inference: when it ran, how long each part took, and for which input."""

    stamp_ns: int                 # header stamp of the input it was computed from
    start_s: float                # wall clock (time.time()) when work on the input started
    end_s: float                  # wall clock when the outputs were ready
    preprocess_ms: float = 0.0
    inference_ms: float = 0.0
    postprocess_ms: float = 0.0
    age_ms: float = 0.0           # input stamp -> end (how stale the action is)
    dropped_frames: int = 0       # frames skipped so far by the latest-frame policy

    @property
    def latency_ms(self) -> float:
        return (self.end_s - self.start_s) * 1e3


def _stamp_prefix(stamp_ns: int) -> list[float]:
    return [float(stamp_ns // 1_000_000_000), float(stamp_ns % 1_000_000_000)]


def _stamp_from(data: np.ndarray) -> int:
    return int(data[0]) * 1_000_000_000 + int(data[1])


def _dim(label: str, size: int, stride: int):
    return messages.new('std_msgs/msg/MultiArrayDimension', label=label, size=size,
                        stride=stride)


def timing_to_msg(t: InferenceTiming):
    values = [t.start_s, t.end_s, t.latency_ms, t.preprocess_ms, t.inference_ms,
              t.postprocess_ms, t.age_ms, float(t.dropped_frames)]
    layout = messages.new('std_msgs/msg/MultiArrayLayout',
                          dim=[_dim(','.join(TIMING_FIELDS), len(values), len(values))],
                          data_offset=2)
    return messages.new('std_msgs/msg/Float64MultiArray', layout=layout,
                        data=np.asarray(_stamp_prefix(t.stamp_ns) + values, dtype=np.float64))


def timing_from_msg(msg) -> InferenceTiming:
    values = values_by_label(msg)
    missing = [f for f in TIMING_FIELDS if f not in values]
    if missing or msg.layout.data_offset != 2:
        raise ValueError(f'not a qail_ros policy_timing message (missing {missing})')
    return InferenceTiming(
        stamp_ns=_stamp_from(msg.data), start_s=values['start_s'], end_s=values['end_s'],
        preprocess_ms=values['preprocess_ms'], inference_ms=values['inference_ms'],
        postprocess_ms=values['postprocess_ms'], age_ms=values['age_ms'],
        dropped_frames=int(values['dropped_frames']))


def raw_outputs_to_msg(stamp_ns: int, outputs: np.ndarray, name: str = 'outputs'):
    """Raw policy outputs of any shape, e.g. (7, 256) action-token logits or (6,) Beta params."""
    arr = np.asarray(outputs, dtype=np.float64)
    shape = arr.shape or (1,)
    dims, stride = [], int(np.prod(shape))
    for i, size in enumerate(shape):
        dims.append(_dim(name if i == 0 else f'{name}_{i}', int(size), stride))
        stride //= max(int(size), 1)
    layout = messages.new('std_msgs/msg/MultiArrayLayout', dim=dims, data_offset=2)
    return messages.new('std_msgs/msg/Float64MultiArray', layout=layout,
                        data=np.concatenate([_stamp_prefix(stamp_ns), arr.ravel()]))


def raw_outputs_from_msg(msg) -> tuple[int, np.ndarray]:
    """(input stamp ns, outputs with their shape)."""
    shape = tuple(int(d.size) for d in msg.layout.dim)
    values = np.asarray(msg.data[msg.layout.data_offset:], dtype=np.float64)
    return _stamp_from(msg.data), values.reshape(shape) if shape else values


def labelled_values(labels: Sequence[str], values: Sequence[float], kind: str = 'float32'):
    """A Float32MultiArray (or Float64) whose dim[0].label names each value, comma-joined."""
    name = 'std_msgs/msg/Float64MultiArray' if kind == 'float64' else \
        'std_msgs/msg/Float32MultiArray'
    dtype = np.float64 if kind == 'float64' else np.float32
    layout = messages.new('std_msgs/msg/MultiArrayLayout',
                          dim=[_dim(','.join(labels), len(values), len(values))])
    return messages.new(name, layout=layout, data=np.asarray(values, dtype=dtype))


def values_by_label(msg) -> dict[str, float]:
    """{label: value} of a labelled array (honours data_offset)."""
    labels = msg.layout.dim[0].label.split(',') if msg.layout.dim else []
    data = msg.data[msg.layout.data_offset:]
    return {label: float(v) for label, v in zip(labels, data)}
