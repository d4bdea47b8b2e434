"""CILRS model: shapes, heads, BatchNorm folding, FLOPs, commands, post-processing, checkpoints."""
import numpy as np
import pytest

from qail_ros.cilrs import CILRSConfig, command_index, postprocess, select_branch

torch = pytest.importorskip('torch', reason='the CILRS model is a torch network')

from qail_ros.cilrs.model import (build_model, count_macs, load_checkpoint,  # noqa: E402
                                  save_checkpoint)
from qail_ros.errors import QailRosError  # noqa: E402

SMALL = dict(resnet=18, height=64, width=128)


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


def test_config_validates_and_round_trips():
    c = CILRSConfig(**SMALL)
    assert CILRSConfig.from_dict(c.to_dict()) == c
    with pytest.raises(ValueError, match='resnet must be 18 or 34'):
        CILRSConfig(resnet=50)
    with pytest.raises(ValueError, match="head must be 'beta'"):
        CILRSConfig(head='gauss')
    with pytest.raises(ValueError, match='unknown CILRS config key'):
        CILRSConfig.from_dict({'resnett': 18})
    d = CILRSConfig()
    assert (d.resnet, d.height, d.width, d.speed_scale) == (34, 256, 900, 12.0)
    assert d.measurement == (128, 128) and d.join == (512, 512, 256) and d.num_branches == 6


@pytest.mark.parametrize('head,per_branch', [('beta', 4), ('deterministic', 2)])
def test_forward_shapes_and_beta_parameters_above_one(head, per_branch):
    model = build_model(head=head, **SMALL)
    image, speed = model.example_inputs(batch=2)
    branches, speed_pred = model(image, speed)
    assert branches.shape == (2, 6, per_branch) and speed_pred.shape == (2, 1)
    if head == 'beta':
        assert bool((branches > 1.0).all())  # softplus + 1: the Beta mode exists
    # the speed input matters (measurement MLP), the image matters (encoder)
    other, _ = model(image, speed + 0.5)
    assert not torch.allclose(other, branches)


def test_fused_model_matches_batchnorm_model():
    model = build_model(**SMALL)
    fused = model.fused()
    assert fused.config.fused_bn and not any(
        isinstance(m, torch.nn.BatchNorm2d) for m in fused.modules())
    x = model.example_inputs(seed=3)
    with torch.no_grad():
        a, b = model(*x), fused(*x)
    torch.testing.assert_close(b[0], a[0], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(b[1], a[1], atol=1e-5, rtol=1e-4)


def test_macs_match_the_measured_resnet34_at_900x256():
    r34 = count_macs(CILRSConfig())
    assert r34['gmacs'] == pytest.approx(17.0, abs=0.05)   # measured here: 17.0 GMACs
    assert r34['gflops'] == pytest.approx(2 * r34['gmacs'])
    r18 = count_macs(CILRSConfig(resnet=18))
    assert r18['gmacs'] < 0.55 * r34['gmacs']
    # stem by hand: 64 x 128 x 450 outputs x (7*7*3) MACs
    stem = 64 * 128 * 450 * 147
    assert r34['macs'] > stem


def test_commands_map_roadoption_values_to_branches():
    assert [command_index(c) for c in (1, 2, 3, 4, 5, 6)] == [0, 1, 2, 3, 4, 5]
    assert command_index(-1) == 3 and command_index(0) == 3 and command_index(99) == 3
    branches = np.arange(24, dtype=np.float32).reshape(1, 6, 4)
    np.testing.assert_array_equal(select_branch(branches, 2), [4, 5, 6, 7])


def test_postprocess_beta_mode_and_throttle_brake_split():
    # alpha = beta -> mode 0.5 -> accel 0, steer 0
    thr, steer, brake, action = postprocess(np.array([3.0, 3.0, 3.0, 3.0]), 'beta')
    assert (thr, steer, brake) == pytest.approx((0.0, 0.0, 0.0))
    # accel: alpha=5, beta=2 -> mode 0.8 -> 0.6 throttle; steer: alpha=2, beta=5 -> -0.6
    thr, steer, brake, _ = postprocess(np.array([5.0, 2.0, 2.0, 5.0]), 'beta')
    assert thr == pytest.approx(0.6) and steer == pytest.approx(-0.6) and brake == 0.0
    thr, steer, brake, _ = postprocess(np.array([-0.4, 2.0]), 'deterministic')
    assert (thr, steer, brake) == pytest.approx((0.0, 1.0, 0.4))
    with pytest.raises(ValueError, match='non-finite'):
        postprocess(np.array([np.nan, 0.0]), 'deterministic')


def test_checkpoint_round_trip_and_clear_errors(tmp_path):
    model = build_model(seed=7, **SMALL)
    path = save_checkpoint(model, tmp_path / 'c.safetensors')
    loaded = load_checkpoint(path)
    assert loaded.config == model.config
    x = model.example_inputs()
    with torch.no_grad():
        torch.testing.assert_close(loaded(*x)[0], model(*x)[0], atol=0, rtol=0)
    bad = tmp_path / 'bad.safetensors'
    bad.write_bytes(b'not a safetensors file')
    with pytest.raises(QailRosError, match='not a readable safetensors'):
        load_checkpoint(bad)
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / 'missing.safetensors')
