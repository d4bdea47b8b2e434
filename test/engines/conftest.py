"""A small CILRS (ResNet-18, 64x128) and its five engines, built once per test session."""
import pytest

SMALL = dict(resnet=18, height=64, width=128)


@pytest.fixture(scope='session')
def cilrs_engines(tmp_path_factory):
    """(source checkpoint, {kind: engine path}, calibration batches)."""
    torch = pytest.importorskip('torch', reason='building engines needs torch')
    pytest.importorskip('onnxruntime', reason='onnxruntime engines (pip install -r '
                        'requirements.txt)')
    pytest.importorskip('onnx', reason='ONNX export needs onnx')
    from qail_ros.cilrs.export import build_engines, synthetic_calibration
    from qail_ros.cilrs.model import build_model, save_checkpoint
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp('cilrs_engines')
    model = build_model(seed=1, **SMALL)
    source = save_checkpoint(model, root / 'cilrs_small.safetensors')
    calib = synthetic_calibration(model.config, 4, seed=0)
    paths = build_engines(source, root / 'engines', calibration=calib)
    return source, paths, calib
