"""The OpenVINO back end: FP32 / BF16 / INT8 (NNCF) engines of CILRS, the MLP, the conv image
policy and the OpenVLA towers agree with FP; files are verified; export calibrates on recorded
data and `--backend auto` records its measurements and choice in the manifest.

Tolerances (small CILRS, random seeded weights, outputs ~1-2): fp32 1e-4, bf16 0.05, the INT8
engines 0.05 (as the onnxruntime W8A8 engine in test_engines.py)."""
import json
import zipfile

import numpy as np
import pytest

from qail_ros.engines import EngineError, load_engine
from qail_ros.engines.manifest import manifest_path, read_manifest

torch = pytest.importorskip('torch', reason='the reference engine is torch')
pytest.importorskip('openvino', reason='the openvino back end is optional (pip install openvino '
                    'nncf, pinned in requirements.txt)')
pytest.importorskip('nncf', reason='OpenVINO INT8 engines are built by nncf')

TOLERANCE = {'fp32_openvino': 1e-4, 'bf16_openvino': 0.05, 'w8a8_openvino': 0.05,
             'w8a8_ort_openvino': 0.05}


def _feed(batch):
    return {'image': batch[0], 'speed': batch[1]}


@pytest.mark.parametrize('kind', sorted(TOLERANCE))
def test_openvino_engine_agrees_with_fp32(cilrs_engines, openvino_engines, kind):
    _, paths, calib = cilrs_engines
    ref = load_engine(paths['fp32_torch'])
    engine = load_engine(openvino_engines[kind])
    d = engine.describe()
    assert d['backend'] == 'openvino' and d['precision'] == kind.split('_')[0]
    engine.warmup(1)
    diffs = []
    for batch in calib:
        want, got = ref.infer(_feed(batch)), engine.infer(_feed(batch))
        assert set(got) == {'branches', 'speed_pred'}
        for name in got:
            assert got[name].shape == want[name].shape and got[name].dtype == np.float32
            np.testing.assert_allclose(got[name], want[name], atol=TOLERANCE[kind], rtol=0,
                                       err_msg=f'{kind} {name}')
            diffs.append(np.abs(got[name] - want[name]).max())
    if kind.startswith('w8a8'):        # really quantized, not a float copy
        assert max(diffs) > 1e-6


def test_int8_ir_is_quantized_and_smaller(openvino_engines):
    sizes = {k: p.stat().st_size for k, p in openvino_engines.items()}
    assert sizes['w8a8_openvino'] < 0.4 * sizes['fp32_openvino']
    ops = read_manifest(openvino_engines['w8a8_openvino'])[1].details['ops']
    assert ops.get('FakeQuantize', 0) >= 10, ops
    assert 'FakeQuantize' not in read_manifest(openvino_engines['fp32_openvino'])[1].details[
        'ops']
    with zipfile.ZipFile(openvino_engines['fp32_openvino']) as z:
        assert sorted(z.namelist()) == ['model.bin', 'model.xml']


def test_openvino_w8a8_from_our_qdq_graph_matches_onnxruntime(cilrs_engines, openvino_engines):
    """OpenVINO compiling the onnxruntime QDQ graph keeps its scales: close to w8a8_ort."""
    _, paths, calib = cilrs_engines
    ort = load_engine(paths['w8a8_ort']).infer(_feed(calib[0]))['branches']
    ov = load_engine(openvino_engines['w8a8_ort_openvino']).infer(_feed(calib[0]))['branches']
    np.testing.assert_allclose(ov, ort, atol=2e-3)


def test_bf16_engine_computes_in_bf16_where_the_cpu_has_it(openvino_engines):
    from qail_ros.engines.openvino_engine import bf16_native
    engine = load_engine(openvino_engines['bf16_openvino'])
    assert engine.runtime_precision() == ('bf16' if bf16_native() else 'f32')
    assert load_engine(openvino_engines['fp32_openvino']).runtime_precision() == 'f32'


def test_corrupt_or_foreign_openvino_file_is_refused(openvino_engines, tmp_path):
    import shutil
    src = openvino_engines['fp32_openvino']
    dst = tmp_path / src.name
    shutil.copyfile(src, dst)
    shutil.copyfile(manifest_path(src), manifest_path(dst))
    dst.write_bytes(b'not a zip')
    m = json.loads(manifest_path(dst).read_text())
    from qail_ros.engines.manifest import sha256_file
    m['engine_sha256'] = sha256_file(dst)
    manifest_path(dst).write_text(json.dumps(m))
    with pytest.raises(EngineError, match='not an OpenVINO engine file'):
        load_engine(dst)


def test_openvino_engines_come_from_the_cache(cilrs_engines, openvino_engines):
    from qail_ros.cilrs.export import OPENVINO_KINDS, build_engines
    source, paths, calib = cilrs_engines
    before = {k: p.stat().st_mtime_ns for k, p in openvino_engines.items()}
    rebuilt: list = []
    again = build_engines(source, paths['fp32_torch'].parent, OPENVINO_KINDS,
                          calibration=calib, rebuilt=rebuilt)
    assert again == openvino_engines and rebuilt == []
    assert {k: p.stat().st_mtime_ns for k, p in again.items()} == before
