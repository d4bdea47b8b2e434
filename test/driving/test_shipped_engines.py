"""The trained CILRS engines shipped in models/cilrs-highway/: manifests valid and tied to their
source model, loadable through the cilrs_policy node, and numerically what they claim on
frames the driving env renders.

Tolerances (the same as test/engines/test_engines.py asserts for built engines):
  w4a4_int8  bit-exact (torch.equal) to the fake-quant student it was exported from
  w8a8_ort   atol 0.05 on the branch outputs and the speed head, vs the FP32 source model
Plus: the node's control for a frame equals EnginePolicy's action (the offline closed-loop
evaluation runs the same numbers as the launch).
"""
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip('torch', reason='the reference models are torch')
pytest.importorskip('onnxruntime', reason='the W8A8 engine is onnxruntime')
pytest.importorskip('highway_env', reason='frames are rendered by highway-env')

from qail_ros.cilrs.config import preprocess_frame  # noqa: E402
from qail_ros.engines import load_engine  # noqa: E402
from qail_ros.engines.manifest import read_manifest, sha256_file  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
FOLDER = ROOT / 'models' / 'cilrs-highway'
FILES = {'fp32_torch': 'cilrs_highway_fp32_torch.safetensors',
         'w8a8_ort': 'cilrs_highway_w8a8_ort.onnx',
         'w4a4_int8': 'cilrs_highway_w4a4_int8.safetensors'}
PRECISION = {'fp32_torch': ('fp32', 'torch'), 'w8a8_ort': ('w8a8', 'onnxruntime'),
             'w4a4_int8': ('w4a4', 'torch-int8')}
W8A8_ATOL = 0.05


@pytest.fixture(scope='module')
def frames():
    """Camera frames (160x72, 50 m) + speeds + commands of the expert driving highway regular,
    routes the shipped models never trained on (seeds 0 and 1 are evaluation routes)."""
    from qail_ros.driving.env import make_env
    out = []
    for seed in (0, 1):
        env = make_env('regular', seed, 'highway', (160, 72), view_m=50.0)
        try:
            obs = env.reset()
            for k in range(25):
                if k % 8 == 0:
                    out.append((obs.image, float(obs.speed), int(obs.command)))
                obs, done, _ = env.step(env.expert_action())
                if done:
                    break
        finally:
            env.close()
    return out


@pytest.fixture(scope='module')
def engines():
    torch.set_num_threads(1)
    return {kind: load_engine(FOLDER / name) for kind, name in FILES.items()}


def test_manifests_validate_and_name_their_source_model():
    src = sha256_file(FOLDER / FILES['fp32_torch'])
    for kind, name in FILES.items():
        engine_path, m = read_manifest(FOLDER / name)   # sha256 of the engine file checked
        assert engine_path.name == name
        assert (m.precision, m.backend) == PRECISION[kind]
        cfg = m.architecture['config']
        assert m.architecture['name'] == 'cilrs'
        assert (cfg['width'], cfg['height']) == (160, 72)
        assert (cfg['resnet'], cfg['base_width']) == (18, 16)
        assert m.inputs['image']['shape'] == [1, 3, 72, 160]
        assert m.details['source_model_sha256'] == src
        assert m.details['camera'] == {'width': 160, 'height': 72, 'view_m': 50.0}
    # the FP engine is the source checkpoint itself; W8A8 is keyed by it (+ its calibration)
    assert read_manifest(FOLDER / FILES['fp32_torch'])[1].source_hash == src
    assert read_manifest(FOLDER / FILES['w8a8_ort'])[1].source_hash.startswith(src + '+calib')
    w4 = read_manifest(FOLDER / FILES['w4a4_int8'])[1]
    assert w4.source_hash == sha256_file(FOLDER / FILES['w4a4_int8'])   # the student file


def test_shipped_files_are_small_and_not_git_ignored():
    import subprocess
    sizes = {k: (FOLDER / n).stat().st_size for k, n in FILES.items()}
    assert sum(sizes.values()) < 7.0e6, sizes
    # int4 codes packed 2 per byte; W8A8 = int8 convolutions + the FP32 MLP heads (1.3 MB)
    assert sizes['w4a4_int8'] < 0.3 * sizes['w8a8_ort'] < 0.2 * sizes['fp32_torch']
    if (ROOT / '.git').exists():
        paths = [str(FOLDER / n) for n in FILES] + [str(FOLDER / (n + '.json')) for n in FILES]
        r = subprocess.run(['git', 'check-ignore', *paths], cwd=ROOT, capture_output=True,
                           text=True)
        assert r.stdout.strip() == '', f'git ignores {r.stdout.split()}'


def test_defaults_point_at_the_shipped_engine():
    import yaml

    from qail_ros.nodes.cilrs_policy import DEFAULT_ENGINE
    from qail_ros.share import config_path, resolve_share_path
    params = yaml.safe_load(config_path('cilrs_drive.yaml').read_text())
    engine = params['cilrs_policy']['ros__parameters']['engine']
    assert engine == DEFAULT_ENGINE == 'models/cilrs-highway/' + FILES['w8a8_ort']
    assert resolve_share_path(engine).resolve() == (FOLDER / FILES['w8a8_ort']).resolve()
    from qail_ros.launching.description import find_launch_file, load_launch_file
    spec = load_launch_file(find_launch_file('cilrs_drive'), [])
    args = {a.name: a.default for a in spec.arguments}
    assert (args['image_width'], args['image_height'], args['view_m']) == ('160', '72', '50.0')
    assert args['engine'] == engine


def test_w4a4_engine_is_bit_exact_to_the_fake_quant_student(engines, frames):
    engine = engines['w4a4_int8']
    assert not engine.kept_float
    ref = engine.reference_model()
    for image, speed, _ in frames:
        x = preprocess_frame(image, speed, engine_config(engine))
        got = engine.infer(x)
        with torch.no_grad():
            want = ref(torch.from_numpy(x['image']), torch.from_numpy(x['speed']))
        for j, name in enumerate(('branches', 'speed_pred')):
            assert torch.equal(torch.from_numpy(got[name]), want[j]), name


def test_w8a8_engine_is_close_to_fp32_and_the_student_is_trained(engines, frames):
    cfg = engine_config(engines['fp32_torch'])
    worst_w8, worst_w4 = 0.0, 0.0
    for image, speed, _ in frames:
        x = preprocess_frame(image, speed, cfg)
        fp = engines['fp32_torch'].infer(x)
        w8 = engines['w8a8_ort'].infer(x)
        w4 = engines['w4a4_int8'].infer(x)
        for name in ('branches', 'speed_pred'):
            np.testing.assert_allclose(w8[name], fp[name], atol=W8A8_ATOL, rtol=0, err_msg=name)
        worst_w8 = max(worst_w8, float(np.abs(w8['branches'] - fp['branches']).max()))
        worst_w4 = max(worst_w4, float(np.abs(w4['branches'] - fp['branches']).max()))
    # W4A4 is further from FP than W8A8 but still the same policy (a trained student, not a
    # random network: its actions stay within a few tenths of the FP ones)
    assert 0.0 < worst_w8 < worst_w4 < 0.5


def test_node_loads_each_engine_and_acts_like_the_offline_policy(rt, engines, frames):
    from qail_ros.driving.engine_policy import EnginePolicy
    from qail_ros.image import from_numpy
    from qail_ros.nodes.cilrs_policy import CILRSPolicy
    for kind, name in FILES.items():
        node = CILRSPolicy(cli_args=['--ros-args', '-p', f'engine:={FOLDER / name}',
                                     '-p', f'expect_precision:={PRECISION[kind][0]}'])
        node.on_configure()
        assert node.engine.precision == PRECISION[kind][0]
        offline = EnginePolicy(engines[kind])
        for k, (image, speed, command) in enumerate(frames[:3]):
            node.speed_mps, node.command = speed, command
            control = node.step(from_numpy(image, 'rgb8', stamp=1_000_000_000 + k,
                                           frame_id='ego_vehicle/rgb_front'))
            accel, steer = offline.act(image, speed, command)
            assert control.steer == pytest.approx(steer, abs=1e-6)
            assert control.throttle - control.brake == pytest.approx(accel, abs=1e-6)
        node.on_cleanup()


def engine_config(engine):
    from qail_ros.cilrs.config import CILRSConfig
    return CILRSConfig.from_dict(engine.manifest.architecture['config'])
