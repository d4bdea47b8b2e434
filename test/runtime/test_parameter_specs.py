"""Parameters declared once with ParameterSpec: ranges checked at declare and on every set,
read-only ones refused with the reason, accepted sets applied (node attribute and hook)."""
import pytest

from qail_ros.errors import ParameterError
from qail_ros.runtime import Node
from qail_ros.runtime.params import ParameterSpec


class Tunable(Node):
    SPECS = (
        ParameterSpec('rate_hz', 10.0, 'how often', min=0.0, min_exclusive=True),
        ParameterSpec('mode', 'fast', 'fast or slow', choices=('fast', 'slow')),
        ParameterSpec('model', 'a.onnx', 'the model file', read_only=True, attr='model_file'),
        ParameterSpec('gain', 1, 'a gain', min=0, max=10),
    )

    def __init__(self, **kwargs):
        super().__init__('tunable', **kwargs)
        self.changes = []
        self.declare_parameters(self.SPECS)

    def on_parameter_change(self, name, value):
        if name == 'gain' and value == 7:
            return 'gain 7 is unlucky'
        self.changes.append((name, value))
        return None


def test_declared_values_and_attributes(rt):
    node = Tunable(cli_args=['--ros-args', '-p', 'rate_hz:=5', '-p', 'model:=b.onnx'])
    assert node.rate_hz == 5.0 and isinstance(node.rate_hz, float)
    assert node.model_file == 'b.onnx' and node.mode == 'fast'
    assert node.parameter_specs['model'].constraints().startswith('read-only')
    assert node.parameter_specs['gain'].constraints() == '>= 0, <= 10'


@pytest.mark.parametrize('arg, message', [
    ('rate_hz:=0.0', 'rate_hz must be > 0.0, not 0.0'),
    ('mode:=medium', "mode must be one of ['fast', 'slow'], not 'medium'"),
    ('gain:=11', 'gain must be <= 10, not 11'),
])
def test_out_of_range_at_start_is_an_error(rt, arg, message):
    with pytest.raises(ParameterError, match=message.replace('[', r'\[').replace(']', r'\]')):
        Tunable(cli_args=['--ros-args', '-p', arg])


def test_set_at_run_time_takes_effect_or_is_refused_with_the_reason(rt):
    node = Tunable()
    node.set_parameter('rate_hz', 20)                   # an int for a float: accepted
    assert node.rate_hz == 20.0 and node.changes == [('rate_hz', 20.0)]
    assert node.get_parameter('rate_hz').value == 20
    with pytest.raises(ParameterError, match='rate_hz must be > 0.0, not -1.0'):
        node.set_parameter('rate_hz', -1.0)
    with pytest.raises(ParameterError, match="'model' is read-only: a change needs a reload"):
        node.set_parameter('model', 'c.onnx')
    with pytest.raises(ParameterError, match='gain 7 is unlucky'):
        node.set_parameter('gain', 7)
    with pytest.raises(ParameterError, match='mode must be str'):
        node.set_parameter('mode', 3)
    # nothing refused changed anything
    assert (node.rate_hz, node.model_file, node.gain, node.mode) == (20.0, 'a.onnx', 1, 'fast')
    assert node.get_parameter('model').value == 'a.onnx'
    assert node.changes == [('rate_hz', 20.0)]
