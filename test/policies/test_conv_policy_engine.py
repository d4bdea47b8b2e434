"""The conv image policy through the engine registry: seeded (no file) and saved weights give
ConvActionRegressor's own outputs; bad sources are clear errors."""
import numpy as np
import pytest

from qail_ros.engines import EngineError, load_engine

torch = pytest.importorskip('torch')


def _frame():
    return np.random.default_rng(1).integers(0, 256, (40, 56, 3), np.uint8)


def test_seeded_engine_is_the_network():
    from qail_ros.policies.conv_action_regressor import (ConvActionRegressor,
                                                         ConvActionRegressorConfig)
    engine = load_engine(None, architecture='conv-image-policy',
                         config={'image_size': 32, 'seed': 4})
    net = ConvActionRegressor(ConvActionRegressorConfig(image_size=32, seed=4)).eval()
    out = engine.infer({'image': _frame(), 'instruction': 'stack the cups'})
    action, raw = net.predict_with_raw(_frame(), 'stack the cups')
    np.testing.assert_array_equal(out['action'], action)
    np.testing.assert_array_equal(out['raw'], raw)
    assert engine.path is None and engine.file_size() == 0
    d = engine.describe()
    assert d['architecture'] == 'conv-image-policy' and d['trained'] is False
    assert d['parameters'] == net.num_parameters()
    other = load_engine(None, architecture='conv-image-policy',
                        config={'image_size': 32, 'seed': 5})
    assert other.manifest.source_hash != engine.manifest.source_hash
    assert engine.warmup(1, 'x') > 0


def test_weights_file_engine(tmp_path):
    from qail_ros.policies.conv_action_regressor import (ConvActionRegressor,
                                                         ConvActionRegressorConfig)
    net = ConvActionRegressor(ConvActionRegressorConfig(image_size=24, seed=9,
                                                        channels=(8, 16))).eval()
    path = tmp_path / 'w.safetensors'
    net.save(path)
    engine = load_engine(path)                        # its class in the metadata: no manifest
    assert engine.manifest.architecture['config']['channels'] == [8, 16]
    out = engine.infer({'image': _frame(), 'instruction': ''})
    np.testing.assert_array_equal(out['action'], net.predict(_frame(), ''))
    assert engine.describe()['trained'] is True


def test_bad_sources_are_clear_errors(tmp_path):
    with pytest.raises(EngineError, match='policy weights not found'):
        load_engine(tmp_path / 'nope.safetensors', architecture='conv-image-policy')
    junk = tmp_path / 'junk.safetensors'
    junk.write_bytes(b'not a safetensors file')
    with pytest.raises(EngineError, match='was not saved by ConvActionRegressor.save'):
        load_engine(junk, architecture='conv-image-policy')
    with pytest.raises(EngineError, match='manifest .* not found'):
        load_engine(junk)                              # no manifest, no known class
    with pytest.raises(EngineError, match='conv image policy config'):
        load_engine(None, architecture='conv-image-policy', config={'image_size': 4})
    with pytest.raises(EngineError, match='runs fp32 / bf16 / int8-dynamic on torch'):
        load_engine(None, architecture='conv-image-policy', precision='w8a8')


@pytest.mark.parametrize('precision, tol', [('bf16', 0.05), ('int8-dynamic', 0.02)])
def test_precisions_are_engines_of_the_same_network(precision, tol):
    """bf16 and int8-dynamic (the monitor's variants) load through the registry: the manifest
    and cache key name the precision, the actions follow fp32's within the precision's error,
    and they are not fp32's bit for bit (the precision really is applied)."""
    config = {'image_size': 32, 'seed': 4}
    fp = load_engine(None, architecture='conv-image-policy', config=config)
    low = load_engine(None, architecture='conv-image-policy', config=config, precision=precision)
    assert low.manifest.precision == precision and fp.manifest.precision == 'fp32'
    assert low.manifest.cache_key != fp.manifest.cache_key
    frames = [np.random.default_rng(i).integers(0, 256, (40, 56, 3), np.uint8) for i in range(4)]
    a = np.stack([fp.infer({'image': f, 'instruction': 'go'})['raw'] for f in frames])
    b = np.stack([low.infer({'image': f, 'instruction': 'go'})['raw'] for f in frames])
    assert b.dtype == np.float32 and b.shape == a.shape
    assert np.abs(a - b).max() <= tol * max(1.0, np.abs(a).max())
    assert not np.array_equal(a, b)
    assert low.warmup(1) > 0


def test_image_policy_node_runs_its_precision(rt):
    """The node's read-only `precision` parameter picks the engine's precision; a change on
    the running node is refused (it needs a reload)."""
    from qail_ros.errors import ParameterError
    from qail_ros.nodes.image_policy import ImagePolicy
    node = ImagePolicy(cli_args=['--ros-args', '-p', 'image_size:=32',
                                 '-p', 'precision:=int8-dynamic'])
    node.on_configure()
    try:
        assert node.engine.manifest.precision == 'int8-dynamic'
        with pytest.raises(ParameterError, match="'precision' is read-only"):
            node.set_parameter('precision', 'fp32')
        assert node.precision == 'int8-dynamic'
        with pytest.raises(ParameterError, match='precision'):
            ImagePolicy(cli_args=['--ros-args', '-p', 'precision:=int3'])
    finally:
        node.on_cleanup()
