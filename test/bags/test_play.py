"""`qail-ros bag play`: a recorded physics_record bag replayed into state_policy on sim time."""
import numpy as np
import pytest

from qail_ros import messages as m
from qail_ros import policy_io
from qail_ros.bag import BagWriter
from qail_ros.bag.play import BagPlayer, recorded_qos
from qail_ros.runtime import Node
from qail_ros.runtime.api import QoS

TASK = 'cartpole-balance'
STEPS = 40
T0 = 1_000_000_000         # sim time of the first step (physics_bridge stamps from sim time)


@pytest.fixture(scope='module')
def fp_engine(tmp_path_factory):
    pytest.importorskip('torch')
    from qail_ros.physics.export import export_policy
    from qail_ros.physics.models import task_dir
    out = tmp_path_factory.mktemp('engines')
    engine, _ = export_policy(task_dir(TASK) / 'fp_policy.safetensors', out, name='fp32')
    return engine


def _record(path, engine_file):
    """What physics_record writes for /state and /action: policy_io stamped arrays, the action
    stamped like the state it answers, a step every 5 ms of sim time."""
    from qail_ros.engines import load_engine
    engine = load_engine(engine_file)
    rng = np.random.default_rng(0)
    actions = {}
    with BagWriter(path, flush_interval_s=0) as bag:
        bag.add_topic('/state', 'std_msgs/msg/Float64MultiArray', qos=QoS(depth=5))
        for i in range(STEPS):
            stamp = T0 + i * 5_000_000
            state = rng.standard_normal(5)
            act = engine.infer({'state': state[None].astype(np.float32)})['action'][0]
            bag.write('/state', policy_io.raw_outputs_to_msg(stamp, state, 'state'), stamp)
            bag.write('/action', policy_io.raw_outputs_to_msg(stamp, act.astype(np.float64),
                                                              'action'), stamp + 300_000)
            actions[stamp] = act
    return actions


class Watcher(Node):
    def __init__(self, **kwargs):
        super().__init__('watcher', **kwargs)
        self.actions, self.clock = [], []
        self.create_subscription('std_msgs/msg/Float64MultiArray', '/action',
                                 self.actions.append, 100)
        self.create_subscription('rosgraph_msgs/msg/Clock', '/clock',
                                 lambda c: self.clock.append(m.ns_from_time(c.clock)), 100)


def test_bag_play_into_state_policy_with_sim_time_gives_the_recorded_actions(
        runtime, tmp_path, fp_engine):
    from qail_ros.nodes.state_policy import StatePolicy
    recorded = _record(tmp_path / 'episode', fp_engine)
    policy = StatePolicy(cli_args=['--ros-args', '-p', f'engine:={fp_engine}',
                                   '-p', 'use_sim_time:=true'])
    watcher = Watcher()
    player = BagPlayer(tmp_path / 'episode', rate=4.0, clock_hz=40.0, topics=['/state'],
                       shutdown_when_done=False)
    assert player.publishers['/state'].qos == QoS(depth=5)        # the recorded QoS
    for node in (policy, watcher, player):
        node.on_configure()
        node.on_activate()
    runtime.spin_until(lambda: player.done and len(watcher.actions) >= STEPS, timeout_s=60)
    for node in (player, watcher, policy):
        node.on_deactivate()
        node.on_cleanup()
    assert player.published == STEPS and len(watcher.actions) == STEPS
    for msg in watcher.actions:
        stamp, values = policy_io.raw_outputs_from_msg(msg)
        np.testing.assert_allclose(values, recorded[stamp], atol=1e-6)
    assert sorted(policy_io.raw_outputs_from_msg(a)[0] for a in watcher.actions) == \
        sorted(recorded)
    # /clock carried the bag's time, and the policy node ran on it
    assert watcher.clock[0] == T0 and max(watcher.clock) == T0 + (STEPS - 1) * 5_000_000
    assert policy.now_ns() == max(watcher.clock)


def test_play_options(runtime, tmp_path):
    with BagWriter(tmp_path / 'b', flush_interval_s=0) as bag:
        for i in range(10):
            bag.write('/n', m.new('std_msgs/msg/UInt32', data=i), T0 + i * 100_000_000)
            bag.write('/other', m.new('std_msgs/msg/String', data='x'), T0 + i * 100_000_000)
    got = []

    class Sink(Node):
        def __init__(self, **kwargs):
            super().__init__('sink', **kwargs)
            self.create_subscription('std_msgs/msg/UInt32', '/n', lambda x: got.append(x.data),
                                     100)

    sink = Sink()
    player = BagPlayer(tmp_path / 'b', rate=10.0, topics=['/n'], start_s=0.5, loop=True,
                       shutdown_when_done=False)
    assert 'rosgraph_msgs/msg/Clock' not in [p.msgtype for p in player._handle.publishers]
    player.on_activate()
    runtime.spin_until(lambda: player.loops >= 1 and len(got) >= 8, timeout_s=20)
    player._finish()
    assert got[:8] == [5, 6, 7, 8, 9, 5, 6, 7]     # --start 0.5 s, then looped
    assert sink is not None
    from rosbags.interfaces import (Qos, QosDurability, QosHistory, QosLiveliness,
                                    QosReliability, QosTime)
    t = QosTime(0, 0)
    q = Qos(QosHistory.KEEP_LAST, 0, QosReliability.BEST_EFFORT, QosDurability.TRANSIENT_LOCAL,
            t, t, QosLiveliness.AUTOMATIC, t, False)
    assert recorded_qos([q]) == QoS(depth=10, reliability='best_effort',
                                    durability='transient_local')
