"""Which bag topics make which data set fields: the topic map.

    # map.yaml (every key optional except action; topics are bag topic names)
    images: {image: /camera/image_raw, wrist: /wrist/image_raw}   # first = the pairing key
    state: [/joint_states]            # concatenated; latest at or before the frame's stamp
    command: [/speed]                 # like state (CILRS speed / command)
    action: [/cmd_twist]              # concatenated; exact stamp match with the frame
    raw_outputs: /vla_policy/raw_outputs     # teacher outputs (QBC), exact stamp
    instruction: /instruction         # latest at or before the frame (bag time)
    image_size: [224, 224]            # [height, width] the images are resized to; omit = keep
    pairing: stamp                    # 'stamp' (header stamps) or 'receive_time'
    stamp_tolerance_ms: 0             # stamp pairing: nearest frame within this (0 = exact)
    max_gap_ms: 100                   # receive_time pairing / secondary images: largest gap

Bags written by fp_recorder carry their topic roles in their custom metadata, so they need no
map. `ros2 bag record` bags from a robot need one; with unstamped action messages (e.g.
Float64MultiArray commands) use `pairing: receive_time`, which pairs each action with the
newest frame received before it, no older than max_gap_ms: an approximation, recorded in the
manifest.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from qail_ros.errors import ParameterError, check_known_keys

__all__ = ['TopicMap', 'PAIRINGS']

PAIRINGS = ('stamp', 'receive_time')


def _as_list(value: Any, key: str) -> list[str]:
    if value is None or value == '':
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        return list(value)
    raise ParameterError(f"topic map: '{key}' must be a topic or a list of topics, not "
                         f'{value!r}')


@dataclasses.dataclass
class TopicMap:
    images: dict[str, str] = dataclasses.field(default_factory=dict)
    state: list[str] = dataclasses.field(default_factory=list)
    command: list[str] = dataclasses.field(default_factory=list)
    action: list[str] = dataclasses.field(default_factory=list)
    raw_outputs: str = ''
    instruction: str = ''
    image_size: tuple[int, int] | None = None
    pairing: str = 'stamp'
    max_gap_ms: float = 100.0
    stamp_tolerance_ms: float = 0.0

    def __post_init__(self):
        if not self.action:
            raise ParameterError('topic map: no action topic; name one under `action:`')
        if not self.images:
            raise ParameterError('topic map: no image topic; name one under `images:` '
                                 '(e.g. images: {image: /camera/image_raw})')
        if self.stamp_tolerance_ms < 0 or self.max_gap_ms < 0:
            raise ParameterError('topic map: stamp_tolerance_ms and max_gap_ms must be >= 0')
        if self.pairing not in PAIRINGS:
            raise ParameterError(f"topic map: pairing must be one of {PAIRINGS}, not "
                                 f"'{self.pairing}'")
        if self.image_size is not None:
            size = tuple(int(v) for v in self.image_size)
            if len(size) != 2 or min(size) <= 0:
                raise ParameterError(f'topic map: image_size must be [height, width] > 0, '
                                     f'not {self.image_size}')
            self.image_size = size
        for key in self.images:
            if not key.replace('_', '').isalnum():
                raise ParameterError(f"topic map: image name '{key}' must be alphanumeric "
                                     '(it becomes observation.images.<name>)')

    @property
    def pair_topic(self) -> str:
        return next(iter(self.images.values()))

    def topics(self) -> dict[str, str]:
        """topic -> what it is for (every topic the map names)."""
        out = {t: f'images.{k}' for k, t in self.images.items()}
        out.update({t: 'state' for t in self.state})
        out.update({t: 'command' for t in self.command})
        out.update({t: 'action' for t in self.action})
        if self.raw_outputs:
            out[self.raw_outputs] = 'raw_outputs'
        if self.instruction:
            out[self.instruction] = 'instruction'
        return out

    def as_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d['image_size'] = list(self.image_size) if self.image_size else None
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> 'TopicMap':
        check_known_keys(data, cls, 'topic map')
        images = data.get('images') or {}
        if isinstance(images, (str, list)):
            images = {('image' if i == 0 else f'image{i}'): t
                      for i, t in enumerate(_as_list(images, 'images'))}
        return cls(images=dict(images), state=_as_list(data.get('state'), 'state'),
                   command=_as_list(data.get('command'), 'command'),
                   action=_as_list(data.get('action'), 'action'),
                   raw_outputs=data.get('raw_outputs') or '',
                   instruction=data.get('instruction') or '',
                   image_size=data.get('image_size'), pairing=data.get('pairing', 'stamp'),
                   max_gap_ms=float(data.get('max_gap_ms', 100.0)),
                   stamp_tolerance_ms=float(data.get('stamp_tolerance_ms', 0.0)))

    @classmethod
    def load(cls, path: str | Path) -> 'TopicMap':
        import yaml
        path = Path(path)
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except OSError as exc:
            raise ParameterError(f"topic map '{path}' cannot be read: {exc.strerror}") from None
        if not isinstance(data, dict):
            raise ParameterError(f"topic map '{path}' must be a YAML mapping")
        return cls.from_dict(data)

    @classmethod
    def from_roles(cls, roles: dict[str, str], image_size=None) -> 'TopicMap':
        """The map of a bag written by fp_recorder (its `roles` episode fact)."""
        images = [t for t, r in roles.items() if r == 'image']
        return cls(images={('image' if i == 0 else f'image{i}'): t for i, t in enumerate(images)},
                   state=[t for t, r in roles.items() if r == 'state'],
                   command=[t for t, r in roles.items() if r == 'command'],
                   action=[t for t, r in roles.items() if r == 'action'],
                   raw_outputs=next((t for t, r in roles.items() if r == 'raw_outputs'), ''),
                   instruction=next((t for t, r in roles.items() if r == 'instruction'), ''),
                   image_size=image_size)
