"""QAIL on a physics task (qail_ros.physics.qail_tasks): D_QAIL, on-policy collection, save/load
of a trained student."""
import pytest
import torch

pytest.importorskip('dm_control', reason='dm_control (physics tasks) is not installed')

from qail_ros.physics.models import shipped_tasks  # noqa: E402
from qail_ros.physics.qail_tasks import (PolicyFileError, build_qail_data,  # noqa: E402
                                         load_any_policy, load_trained, make_collector,
                                         obs_groups, save_trained, train_on_task)
from qail_ros.qail.config import TrainConfig  # noqa: E402
from qail_ros.qail.data import SOURCE_EXPERT, SOURCE_FP  # noqa: E402

from qail_fakequant import fake_quantize  # noqa: E402

TASK = 'cartpole-balance'
pytestmark = pytest.mark.skipif(TASK not in shipped_tasks(),
                                reason=f'no shipped FP policy for {TASK}')


def test_data_collector_train_save_load(tmp_path):
    torch.set_num_threads(1)
    assert obs_groups(TASK) == [[0, 1, 2], [3, 4]]  # position, velocity
    data = build_qail_data(TASK, expert_episodes=1, fp_episodes=1, max_steps=50)
    assert data.counts() == {'expert': 50, 'fp': 50, 'student': 0}
    assert set(data.source[:50].tolist()) == {SOURCE_EXPERT}
    assert set(data.source[50:].tolist()) == {SOURCE_FP}
    states = make_collector(TASK, episodes=1, max_steps=20)(lambda o: torch.zeros(len(o), 1), 0)
    assert states.shape == (20, 5)
    cfg = TrainConfig(method='qail_wqbc', bits='w4a4', steps=6, batch_size=32, progress=False,
                      onpolicy_every=3, onpolicy_episodes=1, onpolicy_max_steps=20,
                      calib_samples=64)
    res = train_on_task(TASK, cfg, data=data, quantize_fn=fake_quantize)
    assert res.onpolicy_states == 40 and res.threshold is not None
    path = save_trained(res, tmp_path / 'policy.safetensors', TASK, meta={'note': 'test'})
    student, info = load_trained(path, quantize_fn=fake_quantize)
    assert info['task'] == TASK and info['config']['method'] == 'qail_wqbc'
    obs = data.obs[:16]
    with torch.no_grad():
        assert torch.equal(student(obs), res.student(obs))
    fp_file = _fp_file(tmp_path)
    with pytest.raises(PolicyFileError, match='not a QAIL student'):
        load_trained(fp_file)
    policy, info = load_any_policy(fp_file)  # an FP file loads as the FP policy
    assert info['format'].startswith('qail_ros.physics.MLPPolicy')
    with pytest.raises(PolicyFileError, match='no policy'):
        load_any_policy(tmp_path / 'missing')


def _fp_file(tmp_path):
    from qail_ros.physics.policy import MLPPolicy, save_policy
    return save_policy(MLPPolicy(5, 1, hidden=8, layers=1), tmp_path / 'fp.safetensors')
