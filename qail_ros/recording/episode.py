"""The facts of one recorded episode, kept where a data set builder can filter on them.

Each episode's facts go (a) into the bag's custom metadata (`metadata.yaml` `custom_data`,
and for mcap an in-file Metadata record written at open, so a crashed bag keeps what was
known at its start), readable without decoding one message, and (b) as JSON in a
std_msgs/String on the dedicated topic EPISODE_TOPIC, at the start and the end of the episode.

`success` is 'true', 'false' or 'unknown'; `complete` is 'false' until the episode ends
properly (an `episode_end` command, max duration, a clean stop); a bag closed by Ctrl-C
mid-episode says complete=false, end_reason=shutdown.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from typing import Any

__all__ = ['EpisodeInfo', 'EPISODE_TOPIC', 'METADATA_PREFIX', 'engine_hash', 'SUCCESS_VALUES']

#: Topic of the episode facts, in the bag and published by the recorder.
EPISODE_TOPIC = '/qail_ros/episode'
#: Prefix of the custom metadata keys written by the recorder.
METADATA_PREFIX = 'qail_ros.episode.'
SUCCESS_VALUES = ('true', 'false', 'unknown')


def engine_hash(path: str | os.PathLike) -> str:
    """'sha256:<hex>' of a model / engine file ('' for an empty path)."""
    if not path:
        return ''
    digest = hashlib.sha256()
    with open(path, 'rb') as f:
        for block in iter(lambda: f.read(1 << 20), b''):
            digest.update(block)
    return f'sha256:{digest.hexdigest()}'


@dataclasses.dataclass
class EpisodeInfo:
    """One episode: who drove, what task, how it ended, and what the recorder saw."""

    index: int
    session: str = ''                   # recorder run this episode belongs to
    policy_id: str = ''
    precision: str = ''
    engine_hash: str = ''
    task: str = ''
    success: str = 'unknown'
    complete: bool = False
    end_reason: str = ''
    start_ns: int = 0
    end_ns: int = 0
    part: int = 0                       # split number inside the episode (size/duration split)
    counts: dict = dataclasses.field(default_factory=dict)     # topic -> messages written
    pairing: dict = dataclasses.field(default_factory=dict)    # StampPairing.summary()
    drops: dict = dataclasses.field(default_factory=dict)      # topic -> queue drops
    roles: dict = dataclasses.field(default_factory=dict)      # topic -> image|action|...

    def __post_init__(self):
        if self.success not in SUCCESS_VALUES:
            raise ValueError(f"episode success must be one of {SUCCESS_VALUES}, "
                             f'not {self.success!r}')

    @property
    def duration_s(self) -> float:
        return max(0, self.end_ns - self.start_ns) / 1e9

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.as_dict(), sort_keys=True)

    def to_metadata(self) -> dict[str, str]:
        """str -> str entries for the bag's custom metadata (flat, prefixed keys)."""
        out = {}
        for key, value in self.as_dict().items():
            if isinstance(value, (dict, list)):
                text = json.dumps(value, sort_keys=True)
            elif isinstance(value, bool):
                text = 'true' if value else 'false'
            else:
                text = str(value)
            out[METADATA_PREFIX + key] = text
        return out

    @classmethod
    def from_metadata(cls, meta: dict[str, str]) -> 'EpisodeInfo | None':
        """Inverse of to_metadata; None when the bag has no episode facts (a foreign bag)."""
        fields = {f.name: f for f in dataclasses.fields(cls)}
        values: dict[str, Any] = {}
        for key, text in (meta or {}).items():
            if not key.startswith(METADATA_PREFIX):
                continue
            name = key[len(METADATA_PREFIX):]
            if name not in fields:
                continue
            kind = fields[name].type
            if name in ('counts', 'pairing', 'drops', 'roles'):
                try:
                    values[name] = json.loads(text)
                except ValueError:
                    values[name] = {}
            elif name == 'complete':
                values[name] = text == 'true'
            elif kind == 'int' or name in ('index', 'start_ns', 'end_ns', 'part'):
                values[name] = int(text or 0)
            else:
                values[name] = text
        if 'index' not in values:
            return None
        if values.get('success') not in SUCCESS_VALUES:
            values['success'] = 'unknown'
        return cls(**values)

    def to_msg(self):
        """std_msgs/msg/String holding to_json()."""
        from qail_ros import messages
        return messages.new('std_msgs/msg/String', data=self.to_json())

    @classmethod
    def from_msg(cls, msg) -> 'EpisodeInfo':
        data = json.loads(msg.data)
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})
