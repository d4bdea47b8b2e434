"""ROS 2 message types, construction with defaults, and CDR, shared by both runtimes.

Nodes use the message classes of the `rosbags` typestore in both runtime modes. CDR produced
here is byte-identical to what a ROS 2 node puts on the wire, so the embedded runtime, the
rclpy runtime (which publishes and receives serialized bytes) and bags all share one format.

    from qail_ros import messages as m
    img = m.new('sensor_msgs/msg/Image', height=2, width=2, encoding='mono8', step=2,
                data=np.zeros(4, np.uint8))
    raw = m.serialize(img)
    assert m.deserialize(raw, 'sensor_msgs/msg/Image').height == 2

Type names follow ROS 2 (`pkg/msg/Name`); the ROS 1 style `pkg/Name` is accepted too.
Extra packages (e.g. carla_msgs) are added with `register_msgdefs`.
"""
from __future__ import annotations

import functools
import threading
from typing import Any

import numpy as np

from qail_ros.errors import UnknownMessageTypeError

__all__ = [
    'DISTRO', 'typestore', 'normalize_type', 'get_class', 'new', 'serialize', 'deserialize',
    'msgdef', 'type_hash', 'register_msgdefs', 'is_message', 'type_name', 'time_from_ns',
    'ns_from_time',
]

#: The ROS 2 distribution whose message definitions and type hashes the typestore carries.
DISTRO = 'jazzy'

_lock = threading.Lock()

_NUMPY_DTYPES = {
    'bool': np.bool_, 'byte': np.uint8, 'char': np.uint8, 'int8': np.int8, 'uint8': np.uint8,
    'int16': np.int16, 'uint16': np.uint16, 'int32': np.int32, 'uint32': np.uint32,
    'int64': np.int64, 'uint64': np.uint64, 'float32': np.float32, 'float64': np.float64,
}


@functools.lru_cache(maxsize=1)
def typestore():
    """The process-wide rosbags typestore (ROS 2 Jazzy definitions)."""
    from rosbags.typesys import Stores, get_typestore
    return get_typestore(Stores.ROS2_JAZZY)


def normalize_type(name: str) -> str:
    """'sensor_msgs/Image' or 'sensor_msgs/msg/Image' -> 'sensor_msgs/msg/Image'."""
    if not isinstance(name, str):
        name = type_name(name)
    parts = name.strip('/').split('/')
    if len(parts) == 2:
        parts = [parts[0], 'msg', parts[1]]
    return '/'.join(parts)


def get_class(name: str | type) -> type[Any]:
    """Message class for a type name (or pass a class through)."""
    if isinstance(name, type):
        return name
    norm = normalize_type(name)
    try:
        return typestore().types[norm]
    except KeyError:
        pkg = norm.split('/')[0]
        known = sorted({t.split('/')[0] for t in typestore().types})
        hint = (f"package '{pkg}' is not registered: call qail_ros.messages.register_msgdefs()"
                f" with its .msg definitions" if pkg not in known else
                f"package '{pkg}' has no such message; its types are: " + ', '.join(
                    sorted(t for t in typestore().types if t.startswith(pkg + '/'))))
        raise UnknownMessageTypeError(f"unknown ROS message type '{name}': {hint}") from None


def type_name(msg_or_cls: Any) -> str:
    """The ROS 2 type name of a message instance or class."""
    try:
        return msg_or_cls.__msgtype__
    except AttributeError:
        raise UnknownMessageTypeError(
            f'{type(msg_or_cls).__name__} is not a qail_ros/rosbags message') from None


def is_message(obj: Any) -> bool:
    return hasattr(obj, '__msgtype__')


def _default(fielddef: tuple) -> Any:
    kind, spec = fielddef
    kind = getattr(kind, 'name', kind)
    if kind == 'BASE':
        base = spec[0]
        if base == 'string' or base == 'wstring':
            return ''
        if base == 'bool':
            return False
        if base in ('float32', 'float64'):
            return 0.0
        return 0
    if kind == 'NAME':
        return new(spec)
    if kind == 'ARRAY':
        sub, length = spec
        sub_kind = getattr(sub[0], 'name', sub[0])
        if sub_kind == 'BASE' and sub[1][0] in _NUMPY_DTYPES:
            return np.zeros(length, dtype=_NUMPY_DTYPES[sub[1][0]])
        return [_default(sub) for _ in range(length)]
    if kind == 'SEQUENCE':
        sub = spec[0]
        sub_kind = getattr(sub[0], 'name', sub[0])
        if sub_kind == 'BASE' and sub[1][0] in _NUMPY_DTYPES:
            return np.zeros(0, dtype=_NUMPY_DTYPES[sub[1][0]])
        return []
    raise TypeError(f'unsupported field definition {fielddef!r}')


def new(name: str | type, /, **fields: Any) -> Any:
    """Build a message, filling every field not given with its ROS default.

    Unknown field names raise TypeError naming the valid ones.
    """
    cls = get_class(name)
    norm = cls.__msgtype__
    _consts, defs = typestore().fielddefs[norm]
    valid = [fname for fname, _ in defs]
    unknown = set(fields) - set(valid)
    if unknown:
        raise TypeError(f"{norm} has no field(s) {sorted(unknown)}; fields are {valid}")
    values = {fname: fields[fname] if fname in fields else _default(fdef)
              for fname, fdef in defs}
    return cls(**values)


def serialize(msg: Any) -> bytes:
    """CDR (little endian, with encapsulation header) bytes of a message."""
    return bytes(typestore().serialize_cdr(msg, msg.__msgtype__))


def deserialize(data: bytes | memoryview, name: str) -> Any:
    """Message from CDR bytes."""
    return typestore().deserialize_cdr(bytes(data) if isinstance(data, memoryview) else data,
                                       normalize_type(name))


def msgdef(name: str) -> str:
    """The full message definition text (ros2msg, dependencies appended) for bags / mcap."""
    text, _md5 = typestore().generate_msgdef(normalize_type(name), ros_version=2)
    return text


def type_hash(name: str) -> str:
    """The RIHS01 type hash ROS 2 (Iron and later) uses to match types."""
    return typestore().hash_rihs01(normalize_type(name))


def register_msgdefs(defs: dict[str, str]) -> None:
    """Register message definitions, {'carla_msgs/msg/CarlaEgoVehicleControl': '<.msg text>'}."""
    from rosbags.typesys import get_types_from_msg
    types: dict = {}
    for tname, text in defs.items():
        types.update(get_types_from_msg(text, normalize_type(tname)))
    with _lock:
        missing = {k: v for k, v in types.items() if k not in typestore().types}
        if missing:
            typestore().register(missing)


def time_from_ns(ns: int) -> Any:
    """builtin_interfaces/msg/Time from integer nanoseconds."""
    return new('builtin_interfaces/msg/Time', sec=int(ns // 1_000_000_000),
               nanosec=int(ns % 1_000_000_000))


def ns_from_time(stamp: Any) -> int:
    """Integer nanoseconds from a builtin_interfaces/msg/Time."""
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)
