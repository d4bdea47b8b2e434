"""Launch files evaluated through the launch shim (qail_ros.launching.description / shim)."""
import json
import os
import runpy
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from qail_ros.errors import LaunchError, ParameterError
from qail_ros.launching import launcher, shim
from qail_ros.launching.description import (available_launch_files, find_launch_file,
                                            load_launch_file, parse_launch_arguments)
from qail_ros.nodes.registry import NODES
from qail_ros.runtime import params as rparams
from qail_ros.share import share_dir

ROOT = Path(__file__).resolve().parents[2]
CONFIG = str(share_dir() / 'config' / 'orin_vla.yaml')


def write_launch(tmp_path, body: str, name='t.launch.py') -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent('''\
        import os
        from ament_index_python.packages import get_package_share_directory
        from launch import LaunchDescription
        from launch.actions import DeclareLaunchArgument
        from launch.substitutions import LaunchConfiguration
        from launch_ros.actions import Node
        ''') + textwrap.dedent(body))
    return path


# -- orin_vla ----------------------------------------------------------------------------------
def test_orin_vla_description_nodes_parameters_and_remaps():
    spec = load_launch_file(find_launch_file('orin_vla'))
    assert [(n.package, n.executable, n.name) for n in spec.nodes] == [
        ('qail_ros', 'camera_source', 'camera_source'),
        ('qail_ros', 'vla_policy', 'vla_policy'),
        ('qail_ros', 'power_monitor', 'power_monitor')]
    camera, policy, monitor = spec.nodes
    assert camera.parameters == [CONFIG] and monitor.parameters == [CONFIG]
    assert policy.parameters == [CONFIG, {'instruction': 'pick up the red block'}]
    assert camera.remappings == [('image_raw', '/camera/image_raw')]
    assert policy.remappings == [('image_raw', '/camera/image_raw')]
    assert camera.namespace is None and policy.namespace is None
    assert spec.values == {'params_file': CONFIG, 'image_topic': '/camera/image_raw',
                           'instruction': 'pick up the red block',
                           'required_nodes': 'vla_policy'}
    assert [n.required for n in spec.nodes] == [False, True, False]


def test_orin_vla_launch_arguments_override_defaults():
    spec = load_launch_file(find_launch_file('orin_vla.launch.py'),
                            ['instruction:=open the top drawer', 'image_topic:=/wrist/image'])
    policy = spec.node('vla_policy')
    assert policy.parameters[1] == {'instruction': 'open the top drawer'}
    assert all(n.remappings == [('image_raw', '/wrist/image')] for n in spec.nodes
               if n.name != 'power_monitor')


def test_orin_vla_params_file_sections_match_the_launched_nodes():
    spec = load_launch_file(find_launch_file('orin_vla'))
    launcher.check_parameter_files(spec)  # no section for a node that is not launched
    sections = rparams.load_params_file(CONFIG)
    assert set(sections) == {'camera_source', 'vla_policy', 'power_monitor'}


def test_orin_vla_executables_are_registered_and_console_scripts_match():
    spec = load_launch_file(find_launch_file('orin_vla'))
    for node in spec.nodes:
        assert node.executable in NODES
    # setup.py reads the same registry file (without importing the package).
    registry = runpy.run_path(str(ROOT / 'qail_ros' / 'nodes' / 'registry.py'))['NODES']
    assert registry == NODES
    setup_text = (ROOT / 'setup.py').read_text()
    assert "'nodes', 'registry.py'" in setup_text and 'runpy.run_path' in setup_text


def test_registered_node_modules_can_run_with_python_dash_m():
    for target in NODES.values():
        module = target.split(':')[0]
        path = ROOT / (module.replace('.', '/') + '.py')
        if not path.exists():
            continue  # written by another issue; checked once it exists
        text = path.read_text()
        assert "if __name__ == '__main__':" in text, f'{path} needs a __main__ guard'
        assert f"def {target.split(':')[1]}(" in text


def test_ros_argv_round_trips_through_ros_arg_parsing(tmp_path):
    spec = load_launch_file(find_launch_file('orin_vla'), ['instruction:=stack the cups'])
    argv = launcher.ros_argv(spec.node('vla_policy'), str(tmp_path))
    ros, rest = rparams.split_ros_args(argv)
    assert rest == []
    assert ros.node_name == 'vla_policy'
    assert ros.remaps == {'image_raw': '/camera/image_raw'}
    assert ros.params_files[0] == CONFIG
    # the dict parameters went to a /** file, after the shared file (launch_ros's order)
    extra = rparams.load_params_file(ros.params_files[1])
    assert extra == {'/**': {'instruction': 'stack the cups'}}


# -- errors ------------------------------------------------------------------------------------
def test_typo_in_launch_name_lists_the_available_files():
    with pytest.raises(LaunchError) as err:
        find_launch_file('orin_vl')
    text = str(err.value)
    assert "no launch file 'orin_vl'" in text and "did you mean 'orin_vla'" in text
    assert 'orin_vla' in available_launch_files()


def test_unknown_launch_argument_is_an_error_with_a_suggestion():
    with pytest.raises(LaunchError, match="no launch argument 'instrution'.*'instruction'"):
        load_launch_file(find_launch_file('orin_vla'), ['instrution:=x'])


def test_malformed_launch_argument():
    with pytest.raises(LaunchError, match='name:=value'):
        parse_launch_arguments(['instruction=x'])


def test_required_argument_and_choices(tmp_path):
    path = write_launch(tmp_path, '''
        def generate_launch_description():
            return LaunchDescription([
                DeclareLaunchArgument('mode', choices=['a', 'b']),
                Node(package='qail_ros', executable='image_policy', name='p',
                     parameters=[{'mode': LaunchConfiguration('mode')}]),
            ])
        ''')
    with pytest.raises(LaunchError, match="'mode' is required.*mode:=VALUE"):
        load_launch_file(path)
    with pytest.raises(LaunchError, match="must be one of"):
        load_launch_file(path, ['mode:=c'])
    assert load_launch_file(path, ['mode:=b']).nodes[0].parameters == [{'mode': 'b'}]


def test_unsupported_action_or_import_is_named(tmp_path):
    path = tmp_path / 'x.launch.py'
    path.write_text('from launch.actions import ExecuteProcess\n'
                    'def generate_launch_description():\n    return None\n')
    with pytest.raises(LaunchError, match='outside the launch subset'):
        load_launch_file(path)
    path = write_launch(tmp_path, '''
        def generate_launch_description():
            return LaunchDescription([Node(package='qail_ros', executable='image_policy',
                                           condition=True)])
        ''')
    with pytest.raises(LaunchError, match=r"\['condition'\] are not supported"):
        load_launch_file(path)


def test_parameter_file_section_typo_is_caught_before_anything_starts(tmp_path):
    params = tmp_path / 'p.yaml'
    params.write_text('image_polcy:\n  ros__parameters:\n    seed: 1\n')
    path = write_launch(tmp_path, f'''
        def generate_launch_description():
            return LaunchDescription([
                Node(package='qail_ros', executable='image_policy', name='image_policy',
                     parameters=[{str(params)!r}]),
            ])
        ''')
    spec = load_launch_file(path)
    with pytest.raises(ParameterError, match="did you mean 'image_policy'"):
        launcher.check_parameter_files(spec)


def test_substitutions_concatenation_yaml_typing_and_nested_dicts(tmp_path):
    path = write_launch(tmp_path, '''
        def generate_launch_description():
            share = get_package_share_directory('qail_ros')
            return LaunchDescription([
                DeclareLaunchArgument('robot', default_value='r1'),
                DeclareLaunchArgument('rate', default_value='2.5'),
                Node(package='qail_ros', executable='camera_source',
                     name=['cam_', LaunchConfiguration('robot')],
                     namespace=LaunchConfiguration('robot'),
                     parameters=[os.path.join(share, 'config', 'orin_vla.yaml'),
                                 {'rate_hz': LaunchConfiguration('rate'), 'size': {'w': 4},
                                  'tags': ['a', 'b'], 'plain': '1.0'}],
                     remappings=[('image_raw', ['/', LaunchConfiguration('robot'), '/img'])],
                     arguments=['--verbose'], ros_arguments=['--log-level', 'debug']),
            ])
        ''')
    node = load_launch_file(path, ['robot:=r2']).nodes[0]
    assert node.name == 'cam_r2' and node.namespace == '/r2'  # absolute, as launch_ros makes it
    assert node.fully_qualified_name == '/r2/cam_r2'
    assert node.parameters[1] == {'rate_hz': 2.5, 'size.w': 4, 'tags': ['a', 'b'],
                                  'plain': '1.0'}
    assert node.remappings == [('image_raw', '/r2/img')]
    argv = launcher.ros_argv(node, str(tmp_path))
    assert argv[0] == '--verbose' and argv[-2:] == ['--log-level', 'debug']
    assert argv[argv.index('__ns:=/r2') - 1] == '-r'


def test_unknown_package_and_executable(tmp_path):
    path = write_launch(tmp_path, '''
        def generate_launch_description():
            get_package_share_directory('nav2_bringup')
        ''')
    with pytest.raises(KeyError, match='nav2_bringup'):
        load_launch_file(path)
    path = write_launch(tmp_path, '''
        def generate_launch_description():
            return LaunchDescription([Node(package='qail_ros', executable='imagepolicy')])
        ''')
    spec = load_launch_file(path)
    with pytest.raises(LaunchError, match="'imagepolicy' is not a qail_ros executable"):
        launcher.node_module(spec.nodes[0])


def test_shim_is_only_installed_while_a_file_is_evaluated():
    sentinel = object()
    before = {name: sys.modules.get(name, sentinel) for name in shim.SHIMMED_MODULES}
    seen = {}

    class Probe:
        def __init__(self):
            import launch
            seen['shim'] = getattr(launch, '__qail_ros_shim__', False)

    with shim.installed():
        Probe()
    assert seen['shim'] is True
    after = {name: sys.modules.get(name, sentinel) for name in shim.SHIMMED_MODULES}
    assert after == before


def _real_launch_ros_nodes(path: Path, arguments: list[str]) -> list[dict]:
    """What the real launch / launch_ros make of a launch file (their private expansion API)."""
    from launch import LaunchContext
    from launch.actions import DeclareLaunchArgument
    from launch_ros.actions import Node
    description = runpy.run_path(str(path))['generate_launch_description']()
    context = LaunchContext()
    for arg in arguments:
        name, _, value = arg.partition(':=')
        context.launch_configurations[name] = value
    nodes = []
    for entity in description.entities:
        if isinstance(entity, DeclareLaunchArgument):
            entity.execute(context)
        elif isinstance(entity, Node):
            entity._perform_substitutions(context)
            params = []
            for value, is_file in entity._Node__expanded_parameter_arguments or []:
                assert is_file
                if os.path.basename(value).startswith('launch_params_'):  # from a dict
                    doc = yaml.unsafe_load(Path(value).read_text())
                    os.remove(value)
                    key, section = next(iter(doc.items()))
                    params.append((key, {k: list(v) if isinstance(v, tuple) else v
                                         for k, v in section['ros__parameters'].items()}))
                else:
                    params.append(os.path.realpath(value))
            ns = entity.expanded_node_namespace
            nodes.append({'package': entity.node_package, 'executable': entity.node_executable,
                          'name': entity._Node__expanded_node_name,
                          'namespace': None if ns.startswith('<') else ns,
                          'parameters': params,
                          'remappings': [tuple(r) for r in entity.expanded_remapping_rules or []]})
    return nodes


COMPLEX_LAUNCH = '''
    def generate_launch_description():
        share = get_package_share_directory('qail_ros')
        robot = LaunchConfiguration('robot')
        return LaunchDescription([
            DeclareLaunchArgument('robot', default_value='r1'),
            DeclareLaunchArgument('rate', default_value='2.5'),
            DeclareLaunchArgument('flag', default_value='true'),
            Node(package='qail_ros', executable='camera_source', name=['cam_', robot],
                 namespace=robot,
                 parameters=[os.path.join(share, 'config', 'orin_vla.yaml'),
                             {'rate_hz': LaunchConfiguration('rate'), 'size': {'w': 4},
                              'flag': LaunchConfiguration('flag'), 'plain': '1.0',
                              'mixed': ['x', robot]}],
                 remappings=[('image_raw', ['/', robot, '/img'])]),
            Node(package='qail_ros', executable='image_policy', name='policy',
                 parameters=[{'instruction': 'go'}]),
        ])
    '''


#: What the real launch / launch_ros (jazzy) make of PARITY_CASES, recorded by running this file
#: as a script where they are importable (see record_launch_ros_fixture); paths under the share
#: directory are written as $SHARE.
LAUNCH_ROS_FIXTURE = Path(__file__).with_name('launch_ros_jazzy_nodes.json')
PARITY_CASES = {
    'orin_vla': ['instruction:=stack the cups', 'image_topic:=/wrist/image_raw'],
    'complex': ['robot:=r2'],
}


def _parity_launch_file(which: str, directory: Path) -> Path:
    if which == 'orin_vla':
        return find_launch_file('orin_vla')
    return write_launch(directory, COMPLEX_LAUNCH)


def _portable(nodes: list[dict]) -> list[dict]:
    """Nodes as JSON would hold them (tuples -> lists), the share directory as $SHARE."""
    share = os.path.realpath(share_dir())

    def walk(v):
        if isinstance(v, str) and (v == share or v.startswith(share + os.sep)):
            return '$SHARE' + v[len(share):]
        if isinstance(v, (list, tuple)):
            return [walk(x) for x in v]
        if isinstance(v, dict):
            return {k: walk(x) for k, x in v.items()}
        return v
    return walk(nodes)


def _shim_nodes(path: Path, arguments: list[str], tmp: Path) -> list[dict]:
    """What the embedded launcher passes each node, in _real_launch_ros_nodes' terms."""
    tmp.mkdir(exist_ok=True)
    ours = []
    for node in load_launch_file(path, arguments).nodes:
        argv = launcher.ros_argv(node, str(tmp))
        files = [argv[i + 1] for i, a in enumerate(argv) if a == '--params-file']
        params = []
        for f in files:
            if f.startswith(str(tmp)):
                key, section = next(iter(yaml.safe_load(Path(f).read_text()).items()))
                params.append((key, section['ros__parameters']))
            else:
                params.append(os.path.realpath(f))
        ours.append({'package': node.package, 'executable': node.executable, 'name': node.name,
                     'namespace': node.namespace, 'parameters': params,
                     'remappings': node.remappings})
    return ours


@pytest.mark.parametrize('which', sorted(PARITY_CASES))
def test_shim_agrees_with_recorded_launch_ros(tmp_path, which):
    """Everywhere: the shim resolves each case exactly as the real launch_ros did when the
    fixture was recorded (names, absolute namespaces, parameter files in order, dict parameters
    with their YAML types and file section, remappings)."""
    recorded = json.loads(LAUNCH_ROS_FIXTURE.read_text())
    assert recorded['arguments'] == PARITY_CASES
    path = _parity_launch_file(which, tmp_path)
    ours = _portable(_shim_nodes(path, PARITY_CASES[which], tmp_path / 'params'))
    assert ours == recorded['cases'][which]


def test_recorded_launch_ros_fixture_holds_launch_ros_choices():
    """The recording shows launch_ros's own choices, which naive ones would miss: dict
    parameters of a named node in a namespace go under its full name (else /**), substituted
    values are read as YAML but plain strings stay strings, nested dicts are flattened."""
    recorded = json.loads(LAUNCH_ROS_FIXTURE.read_text())
    assert recorded['recorded_with'].startswith('launch ') and 'launch_ros' in \
        recorded['recorded_with']
    cam, policy = recorded['cases']['complex']
    assert cam['name'] == 'cam_r2' and cam['namespace'] == '/r2'
    assert cam['parameters'][0] == '$SHARE/config/orin_vla.yaml'
    assert cam['parameters'][1] == ['/r2/cam_r2', {'flag': True, 'mixed': 'xr2',
                                                   'plain': '1.0', 'rate_hz': 2.5,
                                                   'size.w': 4}]
    assert cam['remappings'] == [['image_raw', '/r2/img']]
    assert policy['parameters'] == [['/**', {'instruction': 'go'}]]
    assert [n['executable'] for n in recorded['cases']['orin_vla']] == [
        'camera_source', 'vla_policy', 'power_monitor']


@pytest.mark.parametrize('which', sorted(PARITY_CASES))
def test_shim_agrees_with_real_launch_ros_if_installed(tmp_path, which):
    """On a ROS 2 machine: the real launch_ros, run now, resolves each case as the shim does."""
    pytest.importorskip('launch_ros', reason='launch_ros (ROS 2) is not installed here; '
                        'test_shim_agrees_with_recorded_launch_ros compares with its recording')
    path = _parity_launch_file(which, tmp_path)
    try:
        real = _real_launch_ros_nodes(path, PARITY_CASES[which])
    except LookupError:
        pytest.skip('qail_ros is not in the ament index of this ROS 2 install')
    assert _shim_nodes(path, PARITY_CASES[which], tmp_path / 'params') == real


def record_launch_ros_fixture() -> dict:
    """Run the real launch / launch_ros on PARITY_CASES and write LAUNCH_ROS_FIXTURE.

    Needs `launch`, `launch_ros` (their Python sources suffice, with rclpy, lifecycle_msgs,
    osrf_pycommon, lark, packaging) and qail_ros in the ament index (AMENT_PREFIX_PATH holding
    share/ament_index/resource_index/packages/qail_ros and share/qail_ros -> this checkout).
    """
    import re
    import tempfile

    import launch
    import launch_ros
    out: dict = {'arguments': PARITY_CASES, 'cases': {}}
    with tempfile.TemporaryDirectory() as tmp:
        for which, arguments in PARITY_CASES.items():
            out['cases'][which] = _portable(
                _real_launch_ros_nodes(_parity_launch_file(which, Path(tmp)), arguments))
    versions = []
    for module in (launch, launch_ros):      # package.xml beside a source checkout's package
        xml = Path(module.__file__).parents[1] / 'package.xml'
        text = xml.read_text() if xml.is_file() else ''
        found = re.search(r'<version>([^<]+)</version>', text)
        versions.append(f'{module.__name__} {found.group(1) if found else "(installed)"}')
    out['recorded_with'] = ', '.join(versions)
    LAUNCH_ROS_FIXTURE.write_text(json.dumps(out, indent=1) + '\n')
    return out


def test_dict_parameters_are_written_as_wildcard_parameter_files(tmp_path):
    spec = load_launch_file(find_launch_file('orin_vla'))
    argv = launcher.ros_argv(spec.node('vla_policy'), str(tmp_path))
    files = [argv[i + 1] for i, a in enumerate(argv) if a == '--params-file']
    assert files[0] == CONFIG
    doc = yaml.safe_load(Path(files[1]).read_text())
    assert doc == {'/**': {'ros__parameters': {'instruction': 'pick up the red block'}}}


def test_on_exit_shutdown_is_understood_and_other_actions_refused(tmp_path):
    path = write_launch(tmp_path, '''\
        from launch.actions import Shutdown

        def generate_launch_description():
            return LaunchDescription([
                Node(package='qail_ros', executable='physics_bridge', name='b',
                     on_exit=Shutdown(reason='done')),
                Node(package='qail_ros', executable='state_policy', name='p'),
            ])
        ''')
    spec = load_launch_file(path)
    assert [n.shutdown_on_exit for n in spec.nodes] == [True, False]
    bad = write_launch(tmp_path, '''\
        def generate_launch_description():
            return LaunchDescription([
                Node(package='qail_ros', executable='state_policy', on_exit=[object()]),
            ])
        ''', name='bad.launch.py')
    with pytest.raises(LaunchError, match='only launch.actions.Shutdown'):
        load_launch_file(bad)


@pytest.mark.parametrize('name', ['physics_record', 'physics_drive'])
def test_physics_launch_files_end_with_the_bridge(name):
    spec = load_launch_file(find_launch_file(name), ['engine:=/x/e.safetensors'])
    bridge = spec.node('physics_bridge')
    assert bridge.shutdown_on_exit
    assert all(not n.shutdown_on_exit for n in spec.nodes if n is not bridge)
    assert spec.node('state_policy').parameters[-1]['engine'] == '/x/e.safetensors'


if __name__ == '__main__':
    if sys.argv[1:] != ['--record']:
        sys.exit(f'usage: python {sys.argv[0]} --record   (rewrites {LAUNCH_ROS_FIXTURE.name} '
                 'from the real launch_ros)')
    print(json.dumps(record_launch_ros_fixture(), indent=1))
