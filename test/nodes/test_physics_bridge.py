"""physics_bridge + state_policy on the embedded runtime in one process: the policy closes the
loop through topics, each action answers the state with its stamp, and the returns are the ones
the offline evaluation of the same policy gets."""
import json

import numpy as np
import pytest

pytest.importorskip('dm_control', reason='needs dm-control (pip install dm-control==1.0.50)')

from qail_ros import policy_io  # noqa: E402
from qail_ros.errors import ParameterError  # noqa: E402
from qail_ros.nodes.physics_bridge import PhysicsBridge  # noqa: E402
from qail_ros.nodes.state_policy import StatePolicy  # noqa: E402
from qail_ros.runtime import Node  # noqa: E402

TASK = 'cartpole-balance'


@pytest.fixture(scope='module')
def fp_engine(tmp_path_factory):
    from qail_ros.physics.export import export_policy
    from qail_ros.physics.models import task_dir
    out = tmp_path_factory.mktemp('engines')
    engine, _ = export_policy(task_dir(TASK) / 'fp_policy.safetensors', out, name='fp32')
    return engine


class Watcher(Node):
    def __init__(self, **kwargs):
        super().__init__('watcher', **kwargs)
        self.states, self.images, self.actions, self.raw, self.episodes = [], [], [], [], []
        sub = self.create_subscription
        sub('std_msgs/msg/Float64MultiArray', '/state', self.states.append, 100)
        sub('sensor_msgs/msg/Image', '/image_raw', self.images.append, 100)
        sub('std_msgs/msg/Float64MultiArray', '/action', self.actions.append, 100)
        sub('std_msgs/msg/Float64MultiArray', '/state_policy/raw_outputs', self.raw.append, 100)
        sub('std_msgs/msg/String', '/physics_bridge/episode',
            lambda m: self.episodes.append(json.loads(m.data)), 10)


def start(node):
    node.on_configure()
    node.on_activate()
    return node


def stop(*nodes):
    for node in nodes:
        node.on_deactivate()
        node.on_cleanup()


def bridge_args(*params):
    args = ['--ros-args', '-p', f'task:={TASK}', '-p', 'rate_hz:=2000.0',
            '-p', 'image_width:=32', '-p', 'image_height:=24']
    for p in params:
        args += ['-p', p]
    return args


def test_closed_loop_matches_offline_evaluation_with_exact_stamps(rt, fp_engine):
    from qail_ros.physics.closed_loop import rollout
    from qail_ros.physics.models import load_fp_policy
    watcher = Watcher()
    policy = start(StatePolicy(cli_args=['--ros-args', '-p', f'engine:={fp_engine}',
                                         '-p', 'input_timeout_s:=3600.0']))  # no fail-safe
    bridge = start(PhysicsBridge(cli_args=bridge_args('episodes:=2', 'max_steps:=60',
                                                      'seed:=5')))
    try:
        assert rt.spin_until(lambda: len(watcher.episodes) >= 2, 60.0), bridge.steps
    finally:
        stop(bridge, policy)
    returns = [e['episode']['return'] for e in watcher.episodes]
    offline = rollout(load_fp_policy(TASK), TASK, 2, 5, max_steps=60, record=False).returns
    assert returns == pytest.approx(list(offline), rel=1e-4)
    assert [e['episode']['seed'] for e in watcher.episodes] == [5, 6]
    assert bridge.steps == 120 and bridge.done
    # every action answers one state, with its stamp; image and state of a step share a stamp
    state_stamps = [policy_io.raw_outputs_from_msg(m)[0] for m in watcher.states]
    image_stamps = [m.header.stamp.sec * 10**9 + m.header.stamp.nanosec for m in watcher.images]
    action_stamps = [policy_io.raw_outputs_from_msg(m)[0] for m in watcher.actions]
    assert state_stamps == image_stamps
    assert set(action_stamps) <= set(state_stamps) and len(action_stamps) >= 120
    assert [policy_io.raw_outputs_from_msg(m)[0] for m in watcher.raw] == action_stamps
    first_state = np.asarray(watcher.states[0].data[2:])
    assert first_state.shape == (5,) and watcher.states[0].layout.dim[0].label == 'state'


def test_shutdown_when_done_ends_the_spin_and_marks_episodes(rt, fp_engine):
    import time
    ends = []
    watcher = Watcher()
    watcher.create_subscription('std_msgs/msg/String', '/fp_recorder/control',
                                lambda m: ends.append(m.data), 10)
    policy = start(StatePolicy(cli_args=['--ros-args', '-p', f'engine:={fp_engine}',
                                         '-p', 'input_timeout_s:=3600.0']))  # no fail-safe
    bridge = start(PhysicsBridge(cli_args=bridge_args(
        'episodes:=2', 'max_steps:=20', 'shutdown_when_done:=true', 'success_return:=19.5',
        'recorder_control_topic:=/fp_recorder/control')))
    t0 = time.monotonic()
    try:
        rt.spin(duration_s=30.0)
    finally:
        stop(bridge, policy)
    assert time.monotonic() - t0 < 20.0 and bridge.done
    assert ends == ['episode_end success', 'episode_end success']   # cartpole: ~1 per step


def test_waits_for_the_policy_and_rejects_wrong_sized_actions(rt):
    from qail_ros import messages
    watcher = Watcher()
    bridge = start(PhysicsBridge(cli_args=bridge_args('control_timeout_s:=0.05')))
    try:
        rt.spin_until(lambda: False, 0.3)
        assert bridge.steps == 0            # synchronous: no action yet, no stepping
        pub = watcher.create_publisher('std_msgs/msg/Float64MultiArray', '/action', 10)
        pub.publish(messages.new('std_msgs/msg/Float64MultiArray', data=np.zeros(3)))
        rt.spin_until(lambda: False, 0.2)
        assert bridge.actions_rejected == 1 and bridge.steps == 0
        stamp = policy_io.raw_outputs_from_msg(watcher.states[-1])[0]
        pub.publish(policy_io.raw_outputs_to_msg(stamp, np.array([0.3]), 'action'))
        assert rt.spin_until(lambda: bridge.steps >= 5, 10.0)   # then the timeout carries on
    finally:
        stop(bridge)


def test_bad_parameters_are_named(rt):
    with pytest.raises(ParameterError, match='cartpole-balance'):
        PhysicsBridge(cli_args=['--ros-args', '-p', 'task:=cartpole-swingdown'])
    with pytest.raises(ParameterError, match='camera'):
        PhysicsBridge(cli_args=['--ros-args', '-p', 'camera:=fisheye'])
    with pytest.raises(ParameterError, match="'engine' is empty"):
        StatePolicy()


def test_state_policy_refuses_an_engine_of_another_precision_or_task(rt, fp_engine, tmp_path):
    node = StatePolicy(cli_args=['--ros-args', '-p', f'engine:={fp_engine}',
                                 '-p', 'expect_precision:=w4a4'])
    with pytest.raises(ParameterError, match="precision is 'fp32', expected 'w4a4'"):
        node.on_configure()
    missing = StatePolicy(cli_args=['--ros-args', '-p', f'engine:={tmp_path / "no.safetensors"}'])
    with pytest.raises(ParameterError, match='not found'):
        missing.on_configure()
