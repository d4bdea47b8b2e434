"""Errors raised by qail_ros. Each message names the problem and, where there is one, the fix."""
from __future__ import annotations

from typing import Any


class QailRosError(Exception):
    """Base class of every error qail_ros raises on purpose."""


class UnknownMessageTypeError(QailRosError, KeyError):
    """A ROS message type name that the typestore does not know."""

    def __str__(self):  # KeyError would quote the message otherwise.
        return str(self.args[0]) if self.args else ''


class ImageEncodingError(QailRosError, ValueError):
    """An image encoding that qail_ros cannot convert."""


class ParameterError(QailRosError, ValueError):
    """A bad parameter file, parameter name or parameter value."""


class LaunchError(QailRosError):
    """A launch description that cannot be found or run."""


class BagError(QailRosError):
    """A bag that cannot be written or read."""


class TransportError(QailRosError):
    """The embedded middleware could not be started or reached."""


def check_known_keys(data: Any, cls: type, what: str,
                     error: type[Exception] = ParameterError) -> None:
    """Raise `error` when the mapping `data` has keys that are not fields of the dataclass
    `cls`; the message names each unknown key (with the closest field, if one is close) and
    the fields. `what` names the mapping: 'CILRS config' gives 'unknown CILRS config key(s)'."""
    import dataclasses
    import difflib
    known = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(data) - set(known))
    if unknown:
        hints = [f'{u} (did you mean {m[0]}?)' if (m := difflib.get_close_matches(u, known, 1))
                 else u for u in unknown]
        raise error(f'unknown {what} key(s): {", ".join(hints)}; known: '
                    f'{", ".join(sorted(known))}')
