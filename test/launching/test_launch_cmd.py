"""`qail-ros launch` command line: errors, --show-args, --print (nothing is started)."""
import pytest

from qail_ros.cli import main


def test_typo_in_launch_name_is_a_clear_error(capsys):
    assert main(['launch', 'orin_vl']) == 2
    err = capsys.readouterr().err
    assert "no launch file 'orin_vl'" in err and "did you mean 'orin_vla'?" in err
    assert 'available launch files: ' in err and 'orin_vla' in err.split('available')[1]


def test_typo_in_launch_argument(capsys):
    assert main(['launch', 'orin_vla', 'instrution:=open it']) == 2
    assert "did you mean 'instruction'?" in capsys.readouterr().err


def test_show_args_lists_arguments_and_defaults(capsys):
    assert main(['launch', 'orin_vla.launch.py', '--show-args']) == 0
    out = capsys.readouterr().out
    for name in ('instruction', 'image_topic', 'params_file'):
        assert f'  {name}  default ' in out
    assert "'pick up the red block'" in out


def test_print_shows_each_node_command_line(capsys):
    assert main(['launch', 'orin_vla', 'instruction:=stack the cups', '--print']) == 0
    out = capsys.readouterr().out
    camera = next(line for line in out.splitlines() if line.startswith('[camera_source] '))
    policy = next(line for line in out.splitlines() if line.startswith('[vla_policy] '))
    assert '-m qail_ros.nodes.camera_source --ros-args -r __node:=camera_source' in camera
    assert 'config/orin_vla.yaml' in camera and '-r image_raw:=/camera/image_raw' in camera
    assert '-m qail_ros.nodes.vla_policy' in policy
    assert "parameters {'instruction': 'stack the cups'}" in out


def test_launch_arguments_may_follow_options(capsys):
    """`qail-ros launch NAME --print a:=b`: argparse alone would refuse a:=b after an option."""
    assert main(['launch', 'orin_vla', '--print', 'instruction:=wipe the table']) == 0
    assert "parameters {'instruction': 'wipe the table'}" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exc:       # argparse's own usage error
        main(['launch', 'orin_vla', '--print', 'stray'])
    assert exc.value.code == 2
    assert 'unrecognized arguments: stray' in capsys.readouterr().err
