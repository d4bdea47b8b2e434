"""ConvActionRegressor (the demo image policy) and instruction hashing."""
import subprocess
import sys

import numpy as np
import pytest

from qail_ros.policies.instruction import hash_instruction, tokenize

torch = pytest.importorskip('torch', reason='ConvActionRegressor is a torch network')

from qail_ros.policies import ConvActionRegressor, ConvActionRegressorConfig  # noqa: E402


def frame(seed=0, shape=(480, 640, 3)):
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def test_hashing_is_deterministic_across_processes_and_normalised():
    v = hash_instruction('Pick up the RED block!')
    assert v.shape == (256,) and v.dtype == np.float32
    assert np.linalg.norm(v) == pytest.approx(1.0)
    assert tokenize('Pick up the RED block!') == ['pick', 'up', 'the', 'red', 'block']
    code = ('from qail_ros.policies.instruction import hash_instruction as h; '
            "print(h('pick up the red block').tobytes().hex())")
    other = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                           check=True).stdout.strip()
    assert bytes.fromhex(other) == v.tobytes()  # not Python's per-process salted hash()
    assert not np.allclose(v, hash_instruction('open the drawer'))
    assert not np.any(hash_instruction(''))


def test_same_seed_same_network_and_actions_in_range():
    a = ConvActionRegressor(ConvActionRegressorConfig(seed=3)).eval()
    b = ConvActionRegressor(ConvActionRegressorConfig(seed=3)).eval()
    c = ConvActionRegressor(ConvActionRegressorConfig(seed=4)).eval()
    x = frame()
    act = a.predict(x, 'pick up the red block')
    assert act.shape == (7,) and act.dtype == np.float32 and np.all(np.abs(act) <= 1)
    np.testing.assert_array_equal(act, b.predict(x, 'pick up the red block'))
    assert not np.allclose(act, c.predict(x, 'pick up the red block'))
    # the global torch RNG is untouched by construction
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    ConvActionRegressor()
    assert torch.equal(torch.rand(1), before)


def test_inputs_of_any_size_are_resized_and_conditioning_matters():
    net = ConvActionRegressor().eval()
    assert net.preprocess(frame(shape=(100, 300, 3))).shape == (1, 3, 224, 224)
    x = frame(1)
    assert not np.allclose(net.predict(x, 'stack the cups'), net.predict(x, 'open the drawer'))
    other_frame = net.predict(frame(2), 'stack the cups')
    assert not np.allclose(net.predict(x, 'stack the cups'), other_frame)
    batch = net(net.preprocess(np.stack([x, x])))
    assert batch.shape == (2, 7)
    with pytest.raises(ValueError, match='RGB frames'):
        net.preprocess(np.zeros((10, 10), np.uint8))


def test_save_load_round_trip(tmp_path):
    net = ConvActionRegressor(ConvActionRegressorConfig(seed=5, channels=(8, 16))).eval()
    net.save(tmp_path / 'w.safetensors')
    again = ConvActionRegressor.load(tmp_path / 'w.safetensors').eval()
    assert again.config == net.config
    x = frame(4)
    np.testing.assert_array_equal(net.predict(x, 'go'), again.predict(x, 'go'))


def test_config_validation():
    with pytest.raises(ValueError, match='image_size'):
        ConvActionRegressorConfig(image_size=4)
    with pytest.raises(ValueError, match='channels'):
        ConvActionRegressorConfig(channels=(8, 0))


def test_untrained_actions_follow_a_moving_object():
    """The spatial-softmax keypoints make even untrained actions track what moves, so the
    demo's actions visibly change with the scene (global pooling left them constant to 1e-5)."""
    net = ConvActionRegressor().eval()
    background = np.full((224, 224, 3), (150, 100, 60), np.uint8)
    actions = []
    for x in (20, 80, 140):
        img = background.copy()
        img[100:140, x:x + 40] = (220, 30, 30)  # a red block sliding right
        actions.append(net.predict(img, 'pick up the red block'))
    diffs = [np.abs(a - b).max() for a, b in zip(actions, actions[1:])]
    assert min(diffs) > 0.01, diffs
