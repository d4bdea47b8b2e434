"""--ros-args parsing and ROS 2 parameter files (qail_ros.runtime.params)."""
import pytest

from qail_ros.errors import ParameterError
from qail_ros.runtime import params as p


def test_split_ros_args_separates_ros_and_user_arguments():
    ros, rest = p.split_ros_args(
        ['prog', '--flag', '--ros-args', '-r', '__node:=cam', '-r', '__ns:=/robot',
         '-r', 'image:=/camera/image_raw', '-p', 'rate_hz:=15.0', '-p', 'names:=[a, b]',
         '--params-file', 'x.yaml', '--log-level', 'debug', '--', '--after'])
    assert rest == ['prog', '--flag', '--after']
    assert ros.node_name == 'cam' and ros.namespace == '/robot'
    assert ros.remaps == {'image': '/camera/image_raw'}
    assert ros.params == {'rate_hz': 15.0, 'names': ['a', 'b']}
    assert ros.params_files == ['x.yaml'] and ros.log_level == 'debug'


def test_to_argv_round_trips():
    ros, _ = p.split_ros_args(['--ros-args', '-r', '__node:=n', '-p', 'a:=1', '-p', 'b:=x',
                               '-r', 'in:=out'])
    again, rest = p.split_ros_args(ros.to_argv())
    assert rest == [] and again == ros


@pytest.mark.parametrize('bad', [['--ros-args', '-p', 'novalue'], ['--ros-args', '-r', 'a'],
                                 ['--ros-args', '--bogus'], ['--ros-args', '-p']])
def test_malformed_ros_args_raise(bad):
    with pytest.raises(ParameterError):
        p.split_ros_args(bad)


def test_params_file_sections_and_wildcards(tmp_path):
    f = tmp_path / 'params.yaml'
    f.write_text('/**:\n  ros__parameters:\n    use_sim_time: false\n    rate: 1\n'
                 'camera_source:\n  ros__parameters:\n    rate: 30\n    size: {w: 640, h: 480}\n'
                 '/robot/policy:\n  ros__parameters:\n    model: m.onnx\n')
    sections = p.load_params_file(f)
    assert p.params_for_node(sections, '/camera_source') == {
        'use_sim_time': False, 'rate': 30, 'size.w': 640, 'size.h': 480}
    assert p.params_for_node(sections, '/robot/policy') == {
        'use_sim_time': False, 'rate': 1, 'model': 'm.onnx'}


def test_typo_in_node_name_is_reported_with_a_suggestion(tmp_path):
    f = tmp_path / 'params.yaml'
    f.write_text('camera_sorce:\n  ros__parameters:\n    rate: 30\n')
    sections = p.load_params_file(f)
    with pytest.raises(ParameterError, match="did you mean 'camera_source'"):
        p.check_sections(str(f), sections, ['/camera_source', '/image_policy'])


def test_undeclared_parameter_is_reported_with_a_suggestion():
    with pytest.raises(ParameterError, match="'rate_hx' \\(did you mean 'rate_hz'\\?\\)"):
        p.check_declared('params.yaml', {'rate_hx': 1}, {'rate_hz', 'width'}, 'camera_source')
    p.check_declared('params.yaml', {'rate_hz': 1}, {'rate_hz'}, 'camera_source')


@pytest.mark.parametrize('text,match', [
    ('- a\n- b\n', 'top level'),
    ('node:\n  ros__parameters: 3\n', 'must be a mapping'),
    ('node:\n  rate: 3\n', 'ros__parameters'),
    ('node: [\n', 'not valid YAML'),
])
def test_malformed_params_files_are_explained(tmp_path, text, match):
    f = tmp_path / 'bad.yaml'
    f.write_text(text)
    with pytest.raises(ParameterError, match=match):
        p.load_params_file(f)


def test_missing_params_file():
    with pytest.raises(ParameterError, match='not found'):
        p.load_params_file('/nonexistent/params.yaml')


def test_sections_merge_in_file_order_like_rcl(tmp_path):
    f = tmp_path / 'params.yaml'
    f.write_text('cam:\n  ros__parameters:\n    rate: 30\n'
                 '/**:\n  ros__parameters:\n    rate: 5\n')
    assert p.params_for_node(p.load_params_file(f), '/cam') == {'rate': 5}
