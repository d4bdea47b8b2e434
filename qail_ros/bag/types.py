"""Message types of one bag: the bag's own definitions first, ours (Jazzy) only where it has none.

A bag recorded on Humble carries Humble's `sensor_msgs/msg/Range` (no `variance` field), a
robot's bag carries its own packages' types. Decoding those with our Jazzy definitions fails or,
worse, reads wrong values, so every bag gets a typestore built from its embedded definitions
(mcap schemas, the sqlite3 `message_definitions` table, ROS 1 connection headers), with our
definitions added only for types the bag does not define. When every definition the bag
carries equals ours (bags written by qail_ros, most Jazzy bags) the process-wide typestore is
used as is.
"""
from __future__ import annotations

import logging
from typing import Any

from qail_ros.errors import BagError

__all__ = ['BagTypes', 'parse_definition', 'type_key']

log = logging.getLogger('qail_ros.bag')

_SEP = '=' * 80 + '\n'


def parse_definition(msgtype: str, fmt: str, text: str) -> dict:
    """rosbags typesdict of a definition embedded in a bag (the type and its dependencies).

    fmt: 'msg' (ros2msg / ROS 1 message definition, dependencies in `MSG: pkg/Name` sections)
    or 'idl' (ros2idl, dependencies in `IDL: pkg/msg/Name` sections).
    """
    from rosbags.typesys import get_types_from_idl, get_types_from_msg
    if fmt == 'msg' and '/srv/' in msgtype and msgtype.endswith('_Event') and \
            not text.startswith('MSG:') and '---' in text.split(_SEP)[0]:
        return _service_event_types(msgtype, text)
    if '/srv/' in msgtype or '/action/' in msgtype:
        # service / action event types (rosbag2 records them): parsed under a msg name
        text = text.replace('/srv/', '/msg/').replace('/action/', '/msg/')
        msgtype = type_key(msgtype)
    if fmt == 'idl':
        types: dict = {}
        if text.startswith(f'{_SEP}IDL: '):
            for section in text.split(_SEP)[1:]:
                _head, _, idl = section.partition('\n')
                types.update(get_types_from_idl(idl))
        else:
            types.update(get_types_from_idl(text))
        return types
    return get_types_from_msg(text, msgtype)


def _service_event_types(msgtype: str, text: str) -> dict:
    """rosbag2 stores a service event topic's definition as the .srv text; the event type is
    rosidl's: info, request[<=1], response[<=1]."""
    from rosbags.typesys import get_types_from_msg
    base = type_key(msgtype)[:-len('_Event')]
    srv, _, deps = text.partition(_SEP)
    request, _, response = srv.partition('---')
    tail = (_SEP + deps) if deps else ''
    types: dict = {}
    types.update(get_types_from_msg(request.strip('\n') + '\n' + tail, base + '_Request'))
    types.update(get_types_from_msg(response.strip('\n') + '\n' + tail, base + '_Response'))
    types.update(get_types_from_msg(
        f'service_msgs/ServiceEventInfo info\n{base}_Request[<=1] request\n'
        f'{base}_Response[<=1] response\n', base + '_Event'))
    return types


def type_key(msgtype: str) -> str:
    """The typestore name of a bag's type name ('pkg/Name', 'pkg/srv/Name_Event' included)."""
    parts = msgtype.strip('/').split('/')
    if len(parts) == 2:
        parts = [parts[0], 'msg', parts[1]]
    if len(parts) == 3 and parts[1] in ('srv', 'action'):
        parts[1] = 'msg'
    return '/'.join(parts)


def _fields_key(fielddef: tuple) -> list:
    return [(name.lower(), spec) for name, spec in fielddef[1]]


def _dependencies(fielddefs: dict, name: str, out: set[str]) -> None:
    if name in out or name not in fielddefs:
        return
    out.add(name)

    def visit(spec):
        kind = getattr(spec[0], 'name', spec[0])
        if kind in ('NAME', 2):
            _dependencies(fielddefs, spec[1], out)
        elif kind in ('ARRAY', 'SEQUENCE', 3, 4):
            visit(spec[1][0])

    for _fname, spec in fielddefs[name][1]:
        visit(spec)


class BagTypes:
    """Deserialisation for one bag.

    Args:
        definitions: msgtype -> (format 'msg' | 'idl' | '', text) as the bag carries them.
        ros1: messages are ROS 1 serialised (raw data is converted to CDR on request).
    """

    def __init__(self, definitions: dict[str, tuple[str, str]], ros1: bool = False):
        from qail_ros import messages as m
        self.ros1 = ros1
        self.own: set[str] = set()          # types decoded with the bag's definition
        self.differs: set[str] = set()      # ...whose definition differs from ours
        self.errors: dict[str, str] = {}    # type -> why its embedded definition is unusable
        self._fallback: dict[str, Any] = {}  # type -> typestore used instead of the bag's
        ours = m.typestore()
        parsed: dict = {}
        for msgtype, (fmt, text) in definitions.items():
            if not fmt:            # (an empty text is a valid definition: std_msgs/Empty)
                continue
            try:
                parsed.update(parse_definition(msgtype, fmt, text))
                self.own.add(msgtype)
            except Exception as exc:  # noqa: BLE001 - fall back to ours, say why
                self.errors[msgtype] = f'{type(exc).__name__}: {exc}'
                log.warning('%s: the definition the bag carries cannot be parsed (%s); '
                            'decoding it with the Jazzy definition', msgtype, exc)
        if not parsed and not ros1:
            self.store = ours
            return
        from rosbags.typesys import Stores, get_typestore
        store = get_typestore(Stores.EMPTY)
        try:
            store.register(parsed)
        except Exception as exc:  # noqa: BLE001 - conflicting definitions inside one bag
            raise BagError(f'the message definitions in the bag conflict: {exc}') from None
        missing: set[str] = set()
        for name in map(type_key, definitions):
            if name not in store.fielddefs:
                _dependencies(ours.fielddefs, name, missing)
        for name in list(store.fielddefs):    # dependencies the bag named but did not define
            for _f, spec in store.fielddefs[name][1]:
                kind = getattr(spec[0], 'name', spec[0])
                sub = spec[1] if kind in ('NAME', 2) else (
                    spec[1][0][1] if kind in ('ARRAY', 'SEQUENCE', 3, 4) and getattr(
                        spec[1][0][0], 'name', spec[1][0][0]) in ('NAME', 2) else None)
                if isinstance(sub, str) and sub not in store.fielddefs:
                    _dependencies(ours.fielddefs, sub, missing)
        extra = {k: ours.fielddefs[k] for k in missing - set(store.fielddefs)}
        if extra:
            store.register(extra)
        for name in store.fielddefs:
            have = ours.fielddefs.get(name)
            if have is None or _fields_key(have) != _fields_key(store.fielddefs[name]):
                self.differs.add(name)
        if not self.differs and not ros1:
            self.store = ours        # the bag's definitions are ours: share classes
        else:
            self.store = store

    def knows(self, msgtype: str) -> bool:
        return type_key(msgtype) in self.store.fielddefs

    def deserialize(self, data: bytes | memoryview, msgtype: str) -> Any:
        from qail_ros import messages as m
        from qail_ros.errors import UnknownMessageTypeError
        key = type_key(msgtype)
        store = self._fallback.get(key, self.store)
        if key not in store.fielddefs:
            raise UnknownMessageTypeError(
                f"the bag carries no definition of '{msgtype}' and qail_ros knows none: "
                'register it with qail_ros.messages.register_msgdefs() (its .msg text)')
        data = bytes(data) if isinstance(data, memoryview) else data
        try:
            if self.ros1:
                return store.deserialize_ros1(data, key)
            return store.deserialize_cdr(data, key)
        except Exception as exc:
            ours = m.typestore()
            if self.ros1 or store is ours or key not in ours.fielddefs:
                raise
            # The bag's definition does not fit its data (seen in rosbag2's own test bags,
            # whose message_definitions rows are cut short): ours is tried once, and kept.
            msg = ours.deserialize_cdr(data, key)
            log.warning("%s: the bag's definition does not fit its messages (%s); decoding "
                        'it with the Jazzy definition, which does', msgtype, exc)
            self._fallback[key] = ours
            self.differs.discard(key)
            return msg

    def to_cdr(self, data: bytes, msgtype: str) -> bytes:
        """CDR bytes of a message as stored (ROS 1 messages are converted)."""
        if not self.ros1:
            return data
        key = type_key(msgtype)
        # (decode + encode: rosbags 0.11.9's direct ros1_to_cdr misreads some Header layouts)
        return bytes(self.store.serialize_cdr(self.store.deserialize_ros1(data, key), key))

    def type_hash(self, msgtype: str) -> str:
        """RIHS01 hash of the type as this bag defines it ('' where it cannot be computed)."""
        try:
            return self.store.hash_rihs01(type_key(msgtype))
        except Exception:  # noqa: BLE001 - e.g. a type with no definition
            return ''

    def fields(self, msgtype: str) -> list[str]:
        return [name for name, _ in self.store.fielddefs[msgtype][1]]
