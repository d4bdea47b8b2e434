"""Cache keys come from a checkpoint's tensors, not its file bytes: the seeded checkpoint saved
by two processes keys the same engines (bench cilrs run twice rebuilds nothing), while any
change of a tensor, dtype, shape, name or metadata value changes the key."""
import json
import struct
import subprocess
import sys

import numpy as np
import pytest

from qail_ros.engines import EngineError
from qail_ros.engines.cache import content_hash, safetensors_content_hash


def _write(path, tensors: dict, metadata: dict, order=None):
    """A safetensors file with the header keys in `order` (what a hash map may do)."""
    header, blobs, offset = {}, [], 0
    for name in order or list(tensors):
        a = np.ascontiguousarray(tensors[name])
        header[name] = {'dtype': {'float32': 'F32', 'int64': 'I64'}[str(a.dtype)],
                        'shape': list(a.shape), 'data_offsets': [offset, offset + a.nbytes]}
        blobs.append(a.tobytes())
        offset += a.nbytes
    items = list(header.items())
    meta_first = {'__metadata__': metadata, **dict(items)}
    text = json.dumps(meta_first if order is None else {**dict(items), '__metadata__': metadata})
    data = b''.join(blobs)
    # tensor data must be laid out in header order for offsets to be right
    path.write_bytes(struct.pack('<Q', len(text)) + text.encode() + data)
    return path


def test_header_order_does_not_change_the_hash(tmp_path):
    t = {'a.weight': np.arange(6, dtype=np.float32).reshape(2, 3),
         'b.bias': np.array([1, 2], np.int64)}
    meta = {'format': 'x', 'config': '{"k": 1}'}
    one = _write(tmp_path / 'one.safetensors', t, meta)
    two = _write(tmp_path / 'two.safetensors', t, dict(reversed(list(meta.items()))),
                 order=['b.bias', 'a.weight'])
    assert one.read_bytes() != two.read_bytes()
    assert safetensors_content_hash(one) == safetensors_content_hash(two)
    assert content_hash(one) == content_hash(two)


@pytest.mark.parametrize('change', ['value', 'dtype', 'shape', 'name', 'metadata'])
def test_any_real_change_changes_the_hash(tmp_path, change):
    t = {'w': np.zeros((2, 3), np.float32)}
    meta = {'format': 'x'}
    base = safetensors_content_hash(_write(tmp_path / 'a.safetensors', t, meta))
    if change == 'value':
        t = {'w': np.eye(2, 3, dtype=np.float32)}
    elif change == 'dtype':
        t = {'w': np.zeros((2, 3), np.int64)}
    elif change == 'shape':
        t = {'w': np.zeros((3, 2), np.float32)}
    elif change == 'name':
        t = {'v': t['w']}
    else:
        meta = {'format': 'y'}
    assert safetensors_content_hash(_write(tmp_path / 'b.safetensors', t, meta)) != base


def test_not_safetensors_is_refused(tmp_path):
    bad = tmp_path / 'x.safetensors'
    bad.write_bytes(b'\xff' * 16)
    with pytest.raises(EngineError, match='not a safetensors file'):
        safetensors_content_hash(bad)


def test_two_processes_saving_the_seeded_checkpoint_get_the_same_cache_key(tmp_path):
    """What `bench cilrs` does each run: save the seeded checkpoint, then key its engines."""
    pytest.importorskip('torch')
    code = ('import sys; from qail_ros.cilrs.model import build_model, save_checkpoint; '
            'from qail_ros.engines import EngineCache; '
            'p = save_checkpoint(build_model(seed=0, resnet=18, height=32, width=64), '
            'sys.argv[1]); '
            'print(EngineCache(sys.argv[2]).key(__import__("qail_ros.engines.cache", '
            'fromlist=["x"]).content_hash(p), "onnxruntime", "w8a8"))')
    keys = []
    for i in range(2):
        out = subprocess.run([sys.executable, '-c', code, str(tmp_path / f'c{i}.safetensors'),
                              str(tmp_path / 'cache')], check=True, capture_output=True,
                             text=True)
        keys.append(out.stdout.strip().splitlines()[-1])
    assert keys[0] == keys[1] and len(keys[0]) == 64


def test_rebuilds_nothing_when_the_checkpoint_file_is_rewritten(tmp_path):
    """The cache reuses every engine after the checkpoint is saved again (same tensors)."""
    pytest.importorskip('torch')
    pytest.importorskip('onnxruntime')
    from qail_ros.cilrs.export import build_engines, synthetic_calibration
    from qail_ros.cilrs.model import build_model, save_checkpoint
    model = build_model(seed=0, resnet=18, height=32, width=64)
    src = save_checkpoint(model, tmp_path / 'c.safetensors')
    calib = synthetic_calibration(model.config, 2)
    kinds = ('fp32_torch', 'fp32_ort', 'w8a8_ort')
    first: list = []
    build_engines(src, tmp_path / 'e', kinds, calibration=calib, rebuilt=first)
    assert first == list(kinds)
    # the same tensors, a differently ordered header (as another process may write it)
    raw = src.read_bytes()
    (n,) = struct.unpack('<Q', raw[:8])
    header = json.loads(raw[8:8 + n])
    meta = header.pop('__metadata__')
    text = json.dumps({**header, '__metadata__': dict(reversed(list(meta.items())))}).encode()
    text += b' ' * (n - len(text)) if len(text) <= n else b''
    src.write_bytes(struct.pack('<Q', len(text)) + text + raw[8 + n:])
    again: list = []
    build_engines(src, tmp_path / 'e', kinds, calibration=calib, rebuilt=again)
    assert again == []
