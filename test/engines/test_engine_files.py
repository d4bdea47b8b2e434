"""Manifests and the cache: corrupt / wrong files and mismatches give errors that name the fix;
the cache rebuilds exactly when source hash, back-end version, device or precision changes."""
import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

from qail_ros.engines import EngineCache, EngineError, ManifestMismatchError, load_engine
from qail_ros.engines.manifest import manifest_path, read_manifest, sha256_file


@pytest.fixture
def copied(cilrs_engines, tmp_path):
    """A private copy of the fp32 onnxruntime engine and its manifest."""
    _, paths, _ = cilrs_engines
    src = paths['fp32_ort']
    dst = tmp_path / src.name
    shutil.copyfile(src, dst)
    shutil.copyfile(manifest_path(src), manifest_path(dst))
    return dst


def test_corrupt_engine_file_is_refused(copied):
    data = bytearray(copied.read_bytes())
    data[len(data) // 2] ^= 0xFF
    copied.write_bytes(bytes(data))
    with pytest.raises(EngineError, match='corrupt or was replaced') as err:
        load_engine(copied)
    assert 'qail-ros export CHECKPOINT|cilrs -o DIR' in str(err.value)


def test_truncated_file_with_matching_hash_fails_to_load_clearly(copied):
    copied.write_bytes(copied.read_bytes()[:1000])
    m = json.loads(manifest_path(copied).read_text())
    m['engine_sha256'] = sha256_file(copied)       # someone "fixed" the hash by hand
    manifest_path(copied).write_text(json.dumps(m))
    with pytest.raises(EngineError, match='could not be loaded by onnxruntime'):
        load_engine(copied)


def test_missing_or_broken_manifest(copied):
    mpath = manifest_path(copied)
    mpath.write_text('{not json')
    with pytest.raises(EngineError, match='not valid JSON'):
        load_engine(copied)
    mpath.write_text(json.dumps({'format': 'qail_ros.engine/1'}))
    with pytest.raises(EngineError, match='lacks'):
        load_engine(copied)
    mpath.unlink()
    with pytest.raises(EngineError, match='manifest .* not found'):
        load_engine(copied)


def test_manifest_mismatch_names_every_field(copied):
    with pytest.raises(ManifestMismatchError) as err:
        load_engine(copied, expect={'architecture': 'openvla', 'precision': 'w8a8',
                                    'config': {'height': 256}})
    text = str(err.value)
    assert "architecture is 'cilrs', expected 'openvla'" in text
    assert "precision is 'fp32', expected 'w8a8'" in text
    assert 'config.height is 64, expected 256' in text and 'Fix:' in text
    load_engine(copied, expect={'architecture': 'cilrs', 'precision': 'fp32'})


def test_engine_file_swapped_for_another_is_refused(cilrs_engines, copied):
    _, paths, _ = cilrs_engines
    shutil.copyfile(paths['w8a8_ort'], copied)        # same name, other engine
    with pytest.raises(EngineError, match='corrupt or was replaced'):
        load_engine(copied)


def test_unknown_backend_and_version_bound_backend(copied):
    mpath = manifest_path(copied)
    m = json.loads(mpath.read_text())
    mpath.write_text(json.dumps({**m, 'backend': 'magic'}))
    with pytest.raises(EngineError, match="unknown engine back end 'magic'"):
        load_engine(copied)
    # a TensorRT plan built with another TensorRT / GPU is refused before loading
    mpath.write_text(json.dumps({**m, 'backend': 'tensorrt', 'backend_version': '10.3.0',
                                 'device': 'cuda:sm_87:Orin'}))
    with pytest.raises(EngineError, match='cannot load it; rebuild it here'):
        load_engine(copied)


def _build_counter(calls):
    def build(path):
        calls.append(path)
        path.write_bytes(b'engine bytes %d' % len(calls))
        return {'architecture': {'name': 'toy'}, 'inputs': {}, 'outputs': {}}
    return build


def test_cache_reuses_and_rebuilds_when_any_key_part_changes(tmp_path, monkeypatch):
    from qail_ros.engines import cache as cache_mod
    from qail_ros.engines.torch_engine import TorchEngine
    pytest.importorskip('torch')
    source = tmp_path / 'model.bin'
    source.write_bytes(b'weights v1')
    cache = EngineCache(tmp_path / 'cache')
    calls: list = []
    kw = dict(backend='torch', precision='fp32', build_fn=_build_counter(calls), suffix='.eng')
    path, built = cache.get_or_build(source, 'm', **kw)
    assert built and len(calls) == 1 and read_manifest(path)[1].source_hash == sha256_file(
        source)
    assert cache.get_or_build(source, 'm', **kw) == (path, False) and len(calls) == 1

    source.write_bytes(b'weights v2')                                   # source model
    assert cache.get_or_build(source, 'm', **kw)[1] and len(calls) == 2
    assert 'source_hash' in read_manifest(path)[1].details['rebuilt_because']

    monkeypatch.setattr(TorchEngine, 'backend_version', classmethod(lambda cls: '99.0'))
    assert cache.get_or_build(source, 'm', **kw)[1] and len(calls) == 3   # back-end version
    assert "backend_version" in read_manifest(path)[1].details['rebuilt_because']

    monkeypatch.setattr(cache_mod, 'device_id', lambda device='cpu': 'cuda:sm_87:Orin')
    assert cache.get_or_build(source, 'm', **kw)[1] and len(calls) == 4   # device
    assert cache.get_or_build(source, 'm', **kw)[1] is False

    kw['precision'] = 'bf16'                                              # precision
    assert cache.get_or_build(source, 'm', **kw)[1] and len(calls) == 5

    path.write_bytes(b'tampered')                                         # corrupt entry
    assert cache.get_or_build(source, 'm', **kw)[1] and len(calls) == 6
    assert 'unusable cache entry' in read_manifest(path)[1].details['rebuilt_because']
    assert not list((tmp_path / 'cache').glob('.*tmp*'))                 # no leftovers


def test_failed_build_leaves_no_engine(tmp_path):
    pytest.importorskip('torch')
    source = tmp_path / 'model.bin'
    source.write_bytes(b'w')

    def failing(path):
        path.write_bytes(b'half')
        raise RuntimeError('exporter crashed')
    with pytest.raises(RuntimeError, match='exporter crashed'):
        EngineCache(tmp_path / 'c').get_or_build(
            source, 'm', backend='torch', precision='fp32', build_fn=failing, suffix='.eng')
    assert list((tmp_path / 'c').iterdir()) == []


def test_build_engines_uses_the_cache(cilrs_engines):
    from qail_ros.cilrs.export import build_engines
    source, paths, calib = cilrs_engines
    before = {k: p.stat().st_mtime_ns for k, p in paths.items()}
    again = build_engines(source, paths['fp32_torch'].parent, calibration=calib)
    assert again == paths
    assert {k: p.stat().st_mtime_ns for k, p in again.items()} == before


def _as_tensorrt_plan(src, plan, backend_version: str, device: str):
    """A manifest for `plan` saying it is a TensorRT fp32 plan of the engine `src`."""
    import dataclasses
    from qail_ros.engines.manifest import write_manifest
    _, m = read_manifest(src)
    write_manifest(dataclasses.replace(
        m, engine_file=plan.name, engine_sha256=sha256_file(plan), backend='tensorrt',
        backend_version=backend_version, device=device), plan.parent)


def test_tensorrt_without_tensorrt_names_what_to_install(cilrs_engines, tmp_path, monkeypatch):
    """Where the tensorrt package is missing (forced here even where it is installed): building
    a plan and loading a plan whose manifest matches this machine fail with the install hint,
    before anything else happens; the back-end version reads 'absent'."""
    from qail_ros.engines import tensorrt_engine
    from qail_ros.engines.base import device_id
    monkeypatch.setitem(sys.modules, 'tensorrt', None)      # `import tensorrt` fails
    assert tensorrt_engine.tensorrt_available() is False
    assert tensorrt_engine.TensorRTEngine.backend_version() == 'absent'
    _, paths, _ = cilrs_engines
    plan = tmp_path / 'cilrs.plan'
    with pytest.raises(EngineError, match=r'tensorrt Python package and an NVIDIA GPU.*'
                                          r'pip install tensorrt'):
        tensorrt_engine.build_plan(paths['fp32_ort'], plan, 'fp32')
    assert not plan.exists()
    plan.write_bytes(b'a plan from a machine with tensorrt')
    _as_tensorrt_plan(paths['fp32_ort'], plan, 'absent', device_id())
    with pytest.raises(EngineError, match='tensorrt Python package and an NVIDIA GPU'):
        load_engine(plan)
    # the precision check comes first: a TensorRT plan is never 'w4a4'
    m = json.loads(manifest_path(plan).read_text())
    manifest_path(plan).write_text(json.dumps({**m, 'precision': 'w4a4'}))
    with pytest.raises(EngineError, match="does not run precision 'w4a4'"):
        load_engine(plan)


def test_tensorrt_plan_matches_onnxruntime(cilrs_engines, tmp_path):
    """On a GPU with tensorrt: an fp32 plan of the fp32 ONNX graph gives the onnxruntime
    engine's outputs, through load_engine."""
    from qail_ros.engines.tensorrt_engine import TensorRTEngine, build_plan, tensorrt_available
    if not tensorrt_available():
        pytest.skip('tensorrt is not installed (needs an NVIDIA GPU); the missing-package path '
                    'is test_tensorrt_without_tensorrt_names_what_to_install')
    from qail_ros.engines.base import device_id
    _, paths, _ = cilrs_engines
    plan = build_plan(paths['fp32_ort'], tmp_path / 'cilrs.plan', 'fp32')
    assert plan.stat().st_size > 0
    _as_tensorrt_plan(paths['fp32_ort'], plan, TensorRTEngine.backend_version(),
                      device_id('cuda'))
    trt = load_engine(plan, device='cuda')
    ort = load_engine(paths['fp32_ort'])
    assert trt.backend == 'tensorrt' and trt.precision == 'fp32'
    inputs = ort.example_inputs(seed=3)
    want, got = ort.infer(inputs), trt.infer(inputs)
    assert set(got) == set(want)
    for name in want:
        np.testing.assert_allclose(got[name], want[name], rtol=1e-3, atol=1e-3)


def test_import_is_lean():
    code = ('import sys, qail_ros.engines, qail_ros.cilrs, qail_ros.nodes.cilrs_policy; '
            'heavy = [m for m in ("torch", "onnxruntime", "onnx", "tensorrt", "openvino", "nncf") '
            'if m in sys.modules]; print(heavy); assert not heavy')
    subprocess.run([sys.executable, '-c', code], check=True)
