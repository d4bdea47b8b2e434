"""OpenVLA through the engine registry: a checkpoint directory + precision + back end loads as an
Engine whose outputs are OpenVLAPolicy.predict's, with a manifest derived from the directory and
the INT4 backbone cached by EngineCache."""
import hashlib
import shutil
from pathlib import Path

import numpy as np
import pytest

from qail_ros.engines import EngineError, ManifestMismatchError, load_engine
from qail_ros.openvla.engine import checkpoint_hash, resolve_precision

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / 'models' / 'openvla-tiny'
torch = pytest.importorskip('torch')
pytest.importorskip('transformers', reason='the Llama backbone needs transformers')
TEXT = 'open the drawer'


@pytest.fixture(scope='module')
def frame():
    return np.random.default_rng(5).integers(0, 256, (48, 64, 3), np.uint8)


def test_fp32_engine_is_the_policy(frame):
    from qail_ros.openvla.policy import OpenVLAPolicy
    engine = load_engine(TINY, options={'unnorm_key': 'bridge_orig'})
    ref = OpenVLAPolicy.from_pretrained(TINY, unnorm_key='bridge_orig').predict(frame, TEXT)
    out = engine.infer({'image': frame, 'instruction': TEXT})
    np.testing.assert_array_equal(out['action'], ref.action)
    np.testing.assert_array_equal(out['tokens'], ref.tokens)
    np.testing.assert_array_equal(out['bin_logits'], ref.bin_logits)
    assert out['timing_ms'].shape == (3,) and out['timing_ms'][1] > 0
    m = engine.manifest
    assert (m.architecture['name'], m.precision, m.backend) == ('openvla', 'fp32', 'torch')
    assert m.architecture['config']['action_dim'] == 7
    assert m.source_hash == hashlib.sha256(
        b'sums\n' + (TINY / 'SHA256SUMS').read_bytes()).hexdigest()
    d = engine.describe()
    assert d['backend'] == 'torch' and d['model']['precision'] == 'fp32'
    assert d['file_bytes'] == sum(p.stat().st_size for p in TINY.iterdir() if p.is_file())
    assert engine.warmup(1) > 0


def test_inputs_are_checked(frame):
    engine = load_engine(TINY, options={'unnorm_key': 'bridge_orig'})
    with pytest.raises(EngineError, match=r"input 'image' has shape \[48, 64\]"):
        engine.infer({'image': frame[..., 0], 'instruction': TEXT})
    with pytest.raises(EngineError, match="input 'instruction' is text"):
        engine.infer({'image': frame, 'instruction': 3})
    with pytest.raises(EngineError, match="input 'instruction' missing"):
        engine.infer({'image': frame})


def test_precision_back_end_and_errors():
    assert resolve_precision(None, None) == ('fp32', 'torch')
    assert resolve_precision('int4', None) == ('int4', 'torch')
    assert resolve_precision('int4', 'onnxruntime') == ('int4_ort', 'onnxruntime')
    with pytest.raises(EngineError, match="runs on back end 'onnxruntime', not 'torch'"):
        resolve_precision('int4_ort', 'torch')
    with pytest.raises(EngineError, match="precision 'int3'"):
        load_engine(TINY, precision='int3', options={'unnorm_key': 'bridge_orig'})
    with pytest.raises(EngineError, match=r"options \['nope'\] are unknown"):
        load_engine(TINY, options={'nope': 1})
    with pytest.raises(EngineError, match=r"unnorm_key 'x' is not in"):
        load_engine(TINY, options={'unnorm_key': 'x'})
    with pytest.raises(ManifestMismatchError, match="holds a 'openvla' model, not 'conv-image"):
        load_engine(TINY, architecture='conv-image-policy')


def test_checkpoint_without_sums_hashes_its_files(tmp_path):
    copy = tmp_path / 'vla'
    shutil.copytree(TINY, copy)
    assert checkpoint_hash(copy) == checkpoint_hash(TINY)
    (copy / 'SHA256SUMS').unlink()
    first = checkpoint_hash(copy)
    cfg = copy / 'config.json'
    cfg.write_text(cfg.read_text() + '\n')
    assert checkpoint_hash(copy) != first


def test_int4_backbone_is_cached(tmp_path, frame):
    from qail_ros.openvla.policy import OpenVLAPolicy
    opts = {'unnorm_key': 'bridge_orig', 'int4_group_size': 0, 'cache_dir': tmp_path}
    engine = load_engine(TINY, precision='int4', options=opts)
    entries = sorted(p.name for p in tmp_path.iterdir())
    assert entries == ['openvla-tiny_int4_rtn_g0.safetensors',
                       'openvla-tiny_int4_rtn_g0.safetensors.json']
    stamp = (tmp_path / entries[0]).stat().st_mtime_ns
    again = load_engine(TINY, precision='int4', options=opts)       # reused, not rebuilt
    assert (tmp_path / entries[0]).stat().st_mtime_ns == stamp
    fresh = OpenVLAPolicy.from_pretrained(TINY, unnorm_key='bridge_orig', precision='int4',
                                          int4_group_size=0)
    want = fresh.predict(frame, TEXT)
    for e in (engine, again):
        out = e.infer({'image': frame, 'instruction': TEXT})
        np.testing.assert_array_equal(out['bin_logits'], want.bin_logits)
        assert e.policy.int4_details['file'].endswith(entries[0])
