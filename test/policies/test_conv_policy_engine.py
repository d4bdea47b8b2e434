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
    with pytest.raises(EngineError, match='runs fp32 on torch'):
        load_engine(None, architecture='conv-image-policy', precision='w8a8')
