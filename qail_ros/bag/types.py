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

__all__ = ['BagTypes', 'parse_definition']

log = logging.getLogger('qail_ros.bag')

_SEP = '=' * 80 + '\n'


def parse_definition(msgtype: str, fmt: str, text: str) -> dict:
    """rosbags typesdict of a definition embedded in a bag (the type and its dependencies).

    fmt: 'msg' (ros2msg / ROS 1 message definition, dependencies in `MSG: pkg/Name` sections)
    or 'idl' (ros2idl, dependencies in `IDL: pkg/msg/Name` sections).
    """
    from rosbags.typesys import get_types_from_idl, get_types_from_msg
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
        ours = m.typestore()
        parsed: dict = {}
        for msgtype, (fmt, text) in definitions.items():
            if not text or not fmt:
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
        for name in definitions:
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
        return msgtype in self.store.fielddefs

    def deserialize(self, data: bytes | memoryview, msgtype: str) -> Any:
        from qail_ros.errors import UnknownMessageTypeError
        if msgtype not in self.store.fielddefs:
            raise UnknownMessageTypeError(
                f"the bag carries no definition of '{msgtype}' and qail_ros knows none: "
                'register it with qail_ros.messages.register_msgdefs() (its .msg text)')
        data = bytes(data) if isinstance(data, memoryview) else data
        if self.ros1:
            return self.store.deserialize_ros1(data, msgtype)
        return self.store.deserialize_cdr(data, msgtype)

    def to_cdr(self, data: bytes, msgtype: str) -> bytes:
        """CDR bytes of a message as stored (ROS 1 messages are converted)."""
        if not self.ros1:
            return data
        return bytes(self.store.ros1_to_cdr(data, msgtype))

    def type_hash(self, msgtype: str) -> str:
        """RIHS01 hash of the type as this bag defines it ('' where it cannot be computed)."""
        try:
            return self.store.hash_rihs01(msgtype)
        except Exception:  # noqa: BLE001 - e.g. a type with no definition
            return ''

    def fields(self, msgtype: str) -> list[str]:
        return [name for name, _ in self.store.fielddefs[msgtype][1]]
