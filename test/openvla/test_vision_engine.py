"""The vision towers + projector as an engine (onnxruntime here; TensorRT on a GPU)."""
import json
from pathlib import Path

import numpy as np
import pytest

from qail_ros.openvla import OpenVLAError

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / 'models' / 'openvla-tiny'
torch = pytest.importorskip('torch')
pytest.importorskip('transformers', reason='the Llama backbone needs transformers')
pytest.importorskip('onnxruntime', reason='the vision engine runs on onnxruntime here')
pytest.importorskip('onnx', reason='the export writes ONNX')

TEXT = 'pick up the red block'


@pytest.fixture(scope='module')
def engine(tmp_path_factory):
    from qail_ros.openvla.vision_engine import build_vision_engine
    return build_vision_engine(TINY, tmp_path_factory.mktemp('vision'))


@pytest.fixture(scope='module')
def frames():
    rng = np.random.default_rng(3)
    return [rng.integers(0, 256, (120, 160, 3), np.uint8), np.zeros((64, 64, 3), np.uint8)]


def test_engine_file_and_manifest_describe_the_checkpoint(engine):
    from qail_ros.openvla.config import read_config
    from qail_ros.openvla.vision_engine import ARCHITECTURE, vision_contract
    manifest = json.loads(Path(str(engine) + '.json').read_text())
    contract = vision_contract(read_config(TINY))
    assert manifest['architecture'] == {'name': ARCHITECTURE, 'config': contract['config']}
    assert manifest['backend'] == 'onnxruntime' and manifest['precision'] == 'fp32'
    assert manifest['inputs'] == contract['inputs']
    assert manifest['outputs'] == contract['outputs']
    assert len(manifest['source_hash']) == 64


def test_policy_on_the_engine_acts_as_on_the_torch_towers(engine, frames):
    """Same tokens and actions, bin logits within float rounding; the torch towers are freed;
    with int4_ort the engine feeds the onnxruntime decoder graph."""
    from qail_ros.openvla.policy import OpenVLAPolicy
    ref = OpenVLAPolicy.from_pretrained(TINY, unnorm_key='bridge_orig')
    got = OpenVLAPolicy.from_pretrained(TINY, unnorm_key='bridge_orig', vision_engine=engine,
                                        ort_threads=1)
    assert got.model.vision_backbone is None and got.model.projector is None
    assert got.describe()['vision_engine']['backend'] == 'onnxruntime'
    for frame in frames:
        a, b = ref.predict(frame, TEXT), got.predict(frame, TEXT)
        assert np.array_equal(a.tokens, b.tokens)
        assert np.abs(a.bin_logits - b.bin_logits).max() < 1e-4
    int4 = OpenVLAPolicy.from_pretrained(TINY, unnorm_key='bridge_orig', precision='int4_ort',
                                         vision_engine=engine, ort_threads=1)
    torch_towers = OpenVLAPolicy.from_pretrained(TINY, unnorm_key='bridge_orig',
                                                 precision='int4_ort', ort_threads=1)
    a, b = torch_towers.predict(frames[0], TEXT), int4.predict(frames[0], TEXT)
    assert np.abs(a.bin_logits - b.bin_logits).max() < 1e-3


def test_an_engine_for_another_model_is_refused(engine, tmp_path):
    import shutil

    from qail_ros.openvla.policy import OpenVLAPolicy
    other = tmp_path / Path(engine).name
    shutil.copy(engine, other)
    manifest = json.loads(Path(str(engine) + '.json').read_text())
    manifest['architecture']['config']['llm_hidden'] += 1
    Path(str(other) + '.json').write_text(json.dumps(manifest))
    with pytest.raises(OpenVLAError, match=r'config\.llm_hidden is .* expected'):
        OpenVLAPolicy.from_pretrained(TINY, unnorm_key='bridge_orig', vision_engine=other)
    with pytest.raises(OpenVLAError, match='not bf16'):
        OpenVLAPolicy.from_pretrained(TINY, unnorm_key='bridge_orig', precision='bf16',
                                      vision_engine=engine)


def test_tensorrt_plan(tmp_path, frames):
    """On a GPU with tensorrt: an fp16 plan within fp16 rounding of the torch towers. Without
    tensorrt the builder says where to build it."""
    from qail_ros.engines.tensorrt_engine import tensorrt_available
    from qail_ros.openvla.vision_engine import build_vision_engine
    if not tensorrt_available():
        with pytest.raises(OpenVLAError, match='tensorrt Python package and an NVIDIA GPU'):
            build_vision_engine(TINY, tmp_path, backend='tensorrt')
        pytest.skip('tensorrt is not installed (no NVIDIA GPU here): the plan path runs on a '
                    'GPU machine')
    from qail_ros.openvla.policy import OpenVLAPolicy
    plan = build_vision_engine(TINY, tmp_path, backend='tensorrt', precision='fp16')
    ref = OpenVLAPolicy.from_pretrained(TINY, unnorm_key='bridge_orig')
    got = OpenVLAPolicy.from_pretrained(TINY, unnorm_key='bridge_orig', vision_engine=plan)
    a, b = ref.predict(frames[0], TEXT), got.predict(frames[0], TEXT)
    assert np.abs(a.bin_logits - b.bin_logits).max() < 5e-2


def test_cli_builds_an_engine(tmp_path, capsys):
    from qail_ros.cli import main
    out_dir = tmp_path / 'vla'
    assert main(['export', str(TINY), '-o', str(out_dir), '--backend', 'onnxruntime',
                 '--json']) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert Path(out['engine']).is_file() and Path(out['manifest']).is_file()
    assert Path(out['engine']).parent == out_dir and out['bytes'] > 0
    assert main(['export', str(TINY), '-o', str(out_dir), '--backend', 'onnxruntime',
                 '--precision', 'fp16']) == 2
    assert "builds ['fp32'], not 'fp16'" in capsys.readouterr().err
