"""`qail-ros export`: FP policies and QAIL students -> engines + manifests the nodes load."""
import json

import numpy as np
import pytest

pytest.importorskip('dm_control', reason='needs dm-control (pip install dm-control==1.0.50)')

from qail_ros.cli import main  # noqa: E402
from qail_ros.engines import EngineError, load_engine  # noqa: E402
from qail_ros.engines.manifest import read_manifest, sha256_file  # noqa: E402
from qail_ros.physics.export import export_policy  # noqa: E402
from qail_ros.physics.models import load_fp_policy, task_dir  # noqa: E402
from qail_ros.physics.qail_tasks import PolicyFileError, load_teacher  # noqa: E402

TASK = 'cartpole-balance'


def train(out, bits='w4a4'):
    assert main(['train', '--task', TASK, '--bits', bits, '--steps', '5', '--batch-size', '64',
                 '--expert-episodes', '1', '--fp-episodes', '1', '--onpolicy-every', '0',
                 '--eval-episodes', '0', '--no-progress', '-o', str(out)]) == 0
    return out


@pytest.fixture(scope='module')
def student(tmp_path_factory):
    import torch
    torch.set_num_threads(1)
    return train(tmp_path_factory.mktemp('w4a4'))


def test_fp_export_is_the_fp_policy_on_the_torch_back_end(tmp_path, capsys):
    assert main(['export', 'fp', '--task', TASK, '-o', str(tmp_path), '--json']) == 0
    manifest = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert manifest['precision'] == 'fp32' and manifest['backend'] == 'torch'
    assert manifest['architecture']['name'] == 'mlp'
    assert manifest['inputs'] == {'state': {'shape': [1, 5], 'dtype': 'float32'}}
    assert manifest['outputs'] == {'action': {'shape': [1, 1], 'dtype': 'float32'}}
    fp_file = task_dir(TASK) / 'fp_policy.safetensors'
    assert manifest['source_hash'] == sha256_file(fp_file)
    engine = load_engine(tmp_path / f'{TASK}_fp32.safetensors')
    state = np.random.default_rng(1).standard_normal((1, 5)).astype(np.float32)
    import torch
    want = load_fp_policy(TASK)(torch.from_numpy(state)).detach().numpy()
    np.testing.assert_allclose(engine.infer({'state': state})['action'], want, atol=1e-6)
    # the fp32 engine is a valid teacher, the same function as the policy file
    teacher = load_teacher(tmp_path / f'{TASK}_fp32.safetensors')
    np.testing.assert_allclose(teacher(torch.from_numpy(state)).detach().numpy(), want,
                               atol=1e-6)


def test_student_export_runs_bit_exact_on_int8_kernels(student, tmp_path):
    engine_path, manifest = export_policy(student, tmp_path, name='s')
    assert manifest.precision == 'w4a4' and manifest.backend == 'torch-int8'
    assert manifest.details['export_check']['max_abs_diff'] == 0.0
    assert manifest.details['train_config']['method'] == 'qail_qbc'
    assert manifest.details['task'] == TASK
    engine = load_engine(engine_path)
    assert engine.kept_float == {}           # every layer runs on integer kernels
    # 4-bit codes packed two per byte: far smaller than the fp32 weights
    fp_bytes = (task_dir(TASK) / 'fp_policy.safetensors').stat().st_size
    assert engine.file_size() < fp_bytes / 3
    with pytest.raises(PolicyFileError, match='full-precision'):
        load_teacher(engine_path)


def test_weight_only_student_and_bad_sources_are_refused(tmp_path, capsys):
    weight_only = train(tmp_path / 'w4a16', bits='w4a16')
    with pytest.raises(EngineError, match='weight-only'):
        export_policy(weight_only, tmp_path / 'out')
    assert not (tmp_path / 'out' / f'{TASK}_w4a16.safetensors').exists()
    assert main(['export', 'fp', '-o', str(tmp_path)]) == 2
    assert 'add --task' in capsys.readouterr().err
    (tmp_path / 'junk.safetensors').write_bytes(b'not a policy')
    with pytest.raises(PolicyFileError, match='junk.safetensors is not a readable'):
        export_policy(tmp_path / 'junk.safetensors', tmp_path / 'out')


def test_manifest_tampering_is_detected(student, tmp_path):
    engine_path, _ = export_policy(student, tmp_path, name='s')
    data = bytearray(engine_path.read_bytes())
    data[-1] ^= 0xFF
    engine_path.write_bytes(bytes(data))
    with pytest.raises(EngineError, match='corrupt'):
        read_manifest(engine_path)
