"""Model integrity: SHA256SUMS written by `qail-ros verify --write` (and by save_checkpoint) is
checked at load; an overwritten shard is refused by name; a truncated or corrupt shard is an
error naming the file and the fix, never a raw safetensors traceback."""
import json
import shutil
from pathlib import Path

import pytest

from qail_ros.cli import main as cli
from qail_ros.engines.base import EngineError
from qail_ros.engines.manifest import (CHECKSUMS_FILE, Manifest, read_checksums, read_manifest,
                                       verify_checksums, write_manifest)
from qail_ros.openvla.config import OpenVLAError

pytest.importorskip('safetensors')


@pytest.fixture(scope='module')
def tiny_dir(tmp_path_factory):
    pytest.importorskip('transformers')
    from qail_ros.openvla.tiny import make_tiny_checkpoint
    return make_tiny_checkpoint(tmp_path_factory.mktemp('ckpt') / 'tiny', shards=2)


@pytest.fixture
def ckpt(tiny_dir, tmp_path):
    path = tmp_path / 'tiny'
    shutil.copytree(tiny_dir, path)
    return path


def _shard(path: Path) -> Path:
    return sorted(path.glob('model-*.safetensors'))[-1]


def _overwrite_weights(shard: Path) -> None:
    """Flip bytes in the tensor data (after the header): same size, a valid file."""
    data = bytearray(shard.read_bytes())
    header = int.from_bytes(data[:8], 'little')
    start = 8 + header + 64
    data[start:start + 16] = bytes(b ^ 0xFF for b in data[start:start + 16])
    shard.write_bytes(bytes(data))


def test_save_checkpoint_writes_checksums_and_load_checks_them(ckpt):
    from qail_ros.openvla.checkpoint import load_state_dict
    sums = read_checksums(ckpt)
    assert {'config.json', 'model.safetensors.index.json', _shard(ckpt).name} <= set(sums)
    assert load_state_dict(ckpt)                     # untouched: loads
    _overwrite_weights(_shard(ckpt))
    with pytest.raises(OpenVLAError, match=rf'{_shard(ckpt).name} \(changed\).*SHA256SUMS'):
        load_state_dict(ckpt)
    (ckpt / CHECKSUMS_FILE).unlink()                 # no SHA256SUMS: nothing to compare with
    assert load_state_dict(ckpt)


@pytest.mark.parametrize('damage', ['truncate', 'header'])
def test_truncated_or_corrupt_shard_names_the_file_and_the_fix(ckpt, damage):
    from qail_ros.openvla.checkpoint import load_state_dict
    (ckpt / CHECKSUMS_FILE).unlink()                 # the loader's own check must catch it
    shard = _shard(ckpt)
    data = shard.read_bytes()
    shard.write_bytes(data[:len(data) // 2] if damage == 'truncate'
                      else b'\x10\x00\x00\x00\x00\x00\x00\x00{not json at all')
    with pytest.raises(OpenVLAError) as info:
        load_state_dict(ckpt)
    text = str(info.value)
    assert str(shard) in text and 'truncated or corrupt' in text and 'copy that shard' in text
    assert info.value.__cause__ is None and info.value.__suppress_context__


def test_verify_command_writes_and_checks(ckpt, capsys):
    assert cli(['verify', str(ckpt), '--write']) == 0
    assert 'sha256 of 7 files' in capsys.readouterr().out
    assert cli(['verify', str(ckpt)]) == 0
    assert 'OK, 7 files match' in capsys.readouterr().out
    _overwrite_weights(_shard(ckpt))
    (ckpt / 'tokenizer.json').unlink()
    (ckpt / 'extra.txt').write_text('new')
    assert cli(['verify', str(ckpt)]) == 1
    out = capsys.readouterr().out
    assert f'CHANGED: {_shard(ckpt).name}' in out and 'MISSING: tokenizer.json' in out
    assert 'not in SHA256SUMS (not checked): extra.txt' in out
    assert verify_checksums(ckpt)['changed'] == [_shard(ckpt).name]


def test_verify_command_without_checksums_says_how_to_write_them(tmp_path, capsys):
    assert cli(['verify', str(tmp_path)]) == 2
    assert '--write' in capsys.readouterr().err


def test_engine_manifest_is_covered_by_checksums(tmp_path):
    engine = tmp_path / 'e.onnx'
    engine.write_bytes(b'engine bytes')
    from qail_ros.engines.manifest import sha256_file
    write_manifest(Manifest(engine_file='e.onnx', engine_sha256=sha256_file(engine),
                            architecture={'name': 'x', 'config': {}}, precision='fp32',
                            backend='onnxruntime', backend_version='1', device='cpu',
                            inputs={}, outputs={}, source_hash='s'), tmp_path)
    assert cli(['verify', str(tmp_path), '--write']) == 0
    assert read_manifest(engine)[1].precision == 'fp32'
    path = tmp_path / 'e.onnx.json'
    data = json.loads(path.read_text())
    data['precision'] = 'w4a4'                       # the manifest edited after the fact
    path.write_text(json.dumps(data))
    with pytest.raises(EngineError, match=r'e\.onnx\.json \(changed\)'):
        read_manifest(engine)


def test_shipped_tiny_checkpoint_matches_its_checksums():
    from qail_ros.share import share_dir
    report = verify_checksums(share_dir() / 'models' / 'openvla-tiny')
    assert report is not None, 'models/openvla-tiny/SHA256SUMS is missing'
    assert report['changed'] == [] and report['missing'] == [], (
        f'{report}: if models/openvla-tiny was regenerated on purpose, run '
        'qail-ros verify models/openvla-tiny --write')
