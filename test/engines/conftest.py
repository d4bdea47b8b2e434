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


@pytest.fixture(scope='session')
def openvino_engines(cilrs_engines):
    """{kind: engine path} of the four OpenVINO kinds of the same small CILRS."""
    pytest.importorskip('openvino', reason='the openvino back end is optional (pip install '
                        'openvino nncf, pinned in requirements.txt)')
    pytest.importorskip('nncf', reason='OpenVINO INT8 engines are built by nncf')
    from qail_ros.cilrs.export import OPENVINO_KINDS, build_engines
    source, paths, calib = cilrs_engines
    return build_engines(source, paths['fp32_torch'].parent, OPENVINO_KINDS, calibration=calib)


@pytest.fixture
def write_dataset():
    """The data-set writer below (a fixture: conftest modules are not importable by name)."""
    return _write_dataset


def _write_dataset(root, *, frames=24, episodes=4, height=64, width=128, state_dim=0, seed=0,
                   val=(3,)):
    """A minimal qail_ros data set (manifest + one shard): smooth camera frames, speed under
    observation.command, optional observation.state; episode `val` ids form the val split."""
    import json

    import numpy as np
    from safetensors.numpy import save_file

    from qail_ros.dataset.builder import FORMAT, MANIFEST
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (frames, 4, 8, 3)).astype(np.uint8)
    images = np.repeat(np.repeat(coarse, height // 4, axis=1), width // 8, axis=2)
    arrays = {'observation.images.image': np.ascontiguousarray(images),
              'observation.command': rng.uniform(0, 10, (frames, 1)).astype(np.float32),
              'action': rng.uniform(-1, 1, (frames, 2)).astype(np.float32),
              'episode_index': (np.arange(frames) * episodes // frames).astype(np.int64)}
    if state_dim:
        arrays['observation.state'] = rng.standard_normal((frames, state_dim)).astype(
            np.float32)
    (root / 'data').mkdir(parents=True, exist_ok=True)
    save_file(arrays, str(root / 'data' / 'shard-00000.safetensors'), metadata={'format': FORMAT})
    manifest = {'format': FORMAT, 'frames': frames,
                'features': {k: {'shape': list(v.shape[1:]), 'dtype': str(v.dtype)}
                             for k, v in arrays.items()},
                'splits': {'train': [e for e in range(episodes) if e not in val],
                           'val': list(val)},
                'shards': [{'file': 'data/shard-00000.safetensors', 'first_sample': 0,
                            'samples': frames}]}
    (root / MANIFEST).write_text(json.dumps(manifest))
    return root
