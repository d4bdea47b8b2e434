"""Every policy node loads its model through the engine registry (issue 14 item 1): the load
goes through qail_ros.engines.load_engine with the node's architecture, and the node's step
runs the returned engine."""
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip('torch', reason='the policies run torch')

TINY = Path(__file__).resolve().parents[2] / 'models' / 'openvla-tiny'


@pytest.fixture
def calls(monkeypatch):
    import qail_ros.engines as engines
    real = engines.load_engine
    seen: list = []

    def spy(path=None, **kwargs):
        engine = real(path, **kwargs)
        seen.append((path, kwargs, engine))
        return engine
    monkeypatch.setattr(engines, 'load_engine', spy)
    return seen


def _frame():
    return np.random.default_rng(2).integers(0, 256, (48, 64, 3), np.uint8)


def test_image_policy_runs_a_registry_engine(rt, calls, tmp_path):
    from qail_ros.image import from_numpy
    from qail_ros.nodes.image_policy import ImagePolicy
    node = ImagePolicy(cli_args=['--ros-args', '-p', 'image_size:=32', '-p', 'seed:=3'])
    node.on_configure()
    [(path, kwargs, engine)] = calls
    assert path is None and kwargs['architecture'] == 'conv-image-policy'
    assert kwargs['config'] == {'image_size': 32, 'seed': 3}
    assert node.engine is engine and node.policy is engine.model
    want = engine.infer({'image': _frame(), 'instruction': ''})['action']
    got = node.step(from_numpy(_frame(), 'rgb8', stamp=1, frame_id='camera'))
    np.testing.assert_array_equal(np.asarray(got, np.float32), want)
    node.on_cleanup()
    assert node.engine is None and node.policy is None


def test_vla_policy_runs_a_registry_engine(rt, calls, monkeypatch):
    pytest.importorskip('transformers', reason='the OpenVLA backbone needs transformers')
    monkeypatch.setenv('HF_HUB_OFFLINE', '1')
    from qail_ros.nodes.vla_policy import VLAPolicy
    node = VLAPolicy(cli_args=['--ros-args', '-p', f'model_path:={TINY}',
                               '-p', 'unnorm_key:=bridge_orig', '-p', 'precision:=bf16'])
    node.on_configure()
    [(path, kwargs, engine)] = calls
    assert Path(path) == TINY and kwargs['architecture'] == 'openvla'
    assert kwargs['precision'] == 'bf16' and kwargs['options']['unnorm_key'] == 'bridge_orig'
    assert (engine.manifest.precision, engine.manifest.backend) == ('bf16', 'torch')
    assert node.engine is engine and node.policy is engine.policy
    node.on_cleanup()
    assert node.engine is None and node.policy is None
