"""qail_ros.errors.check_known_keys: unknown dataclass keys are named, with the closest field."""
import dataclasses

import pytest

from qail_ros.errors import ParameterError, QailRosError, check_known_keys


@dataclasses.dataclass
class _Config:
    steps: int = 1
    batch_size: int = 2


def test_known_keys_pass():
    check_known_keys({'steps': 3}, _Config, 'demo config')
    check_known_keys({}, _Config, 'demo config')


def test_unknown_keys_are_named_with_a_suggestion_and_the_fields():
    with pytest.raises(ParameterError) as info:
        check_known_keys({'stepz': 3, 'zzz': 1, 'steps': 2}, _Config, 'demo config')
    text = str(info.value)
    assert text.startswith('unknown demo config key(s): stepz (did you mean steps?), zzz;')
    assert text.endswith('known: batch_size, steps')


def test_the_error_class_is_the_callers():
    class MyError(QailRosError):
        pass
    with pytest.raises(MyError, match='unknown x key'):
        check_known_keys({'q': 1}, _Config, 'x', MyError)
