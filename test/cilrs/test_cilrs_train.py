"""CILRS behaviour cloning: branched loss, training reduces it, the driving policy adapter."""
import numpy as np
import pytest

torch = pytest.importorskip('torch', reason='CILRS training is torch')

from qail_ros.cilrs.train import (CILRSPolicy, bc_loss, branch_index, normalise,  # noqa: E402
                                  select_actions, small_config, train_bc)

W, H = 64, 32


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


def _demos(n=48, seed=0):
    """Synthetic demonstrations whose action depends on the image and the command."""
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, size=(n, H, W, 3), dtype=np.uint8)
    command = rng.choice([4, 5, 6], size=n).astype(np.int64)
    speed = rng.uniform(0, 30, size=n).astype(np.float32)
    bright = image.reshape(n, -1).mean(1) / 255.0
    act = np.stack([bright - 0.5, (command - 5) * 0.5], axis=1).astype(np.float32)
    return {'image': image, 'speed': speed, 'command': command, 'act': act}


def test_branch_index_maps_void_and_unknown_to_lanefollow():
    idx = branch_index(np.array([1, 4, 6, -1, 0, 9]), 6)
    assert idx.tolist() == [0, 3, 5, 3, 3, 3]


def test_select_actions_takes_each_samples_branch():
    branches = torch.arange(2 * 6 * 2, dtype=torch.float32).reshape(2, 6, 2)
    out = select_actions(branches, torch.tensor([1, 6]))
    assert out.tolist() == [[0.0, 1.0], [22.0, 23.0]]


def test_normalise_shapes_and_rejects_wrong_size():
    cfg = small_config(W, H)
    d = _demos(4)
    img, spd = normalise(d['image'], d['speed'], cfg)
    assert img.shape == (4, 3, H, W) and spd.shape == (4, 1)
    assert torch.allclose(spd[:, 0], torch.as_tensor(d['speed']) / cfg.speed_scale)
    with pytest.raises(ValueError, match='image_size'):
        normalise(np.zeros((1, H + 1, W, 3), np.uint8), np.zeros(1), cfg)


def test_branched_loss_only_trains_the_commanded_branch():
    cfg = small_config(W, H)
    from qail_ros.cilrs.model import build_model
    model = build_model(cfg).train()
    d = _demos(8)
    img, spd = normalise(d['image'], d['speed'], cfg)
    cmd = torch.full((8,), 4)
    loss, rec = bc_loss(model, img, spd, cmd, torch.as_tensor(d['act']))
    loss.backward()
    assert rec['loss'] > 0
    grads = [b[-1].weight.grad for b in model.branches]
    assert grads[3] is not None and grads[3].abs().sum() > 0
    assert all(g is None or g.abs().sum() == 0 for i, g in enumerate(grads) if i != 3)


def test_bc_reduces_the_loss_and_the_policy_drives_batches():
    cfg = small_config(W, H, base_width=8)
    d = _demos(48)
    model, hist = train_bc(d, cfg, steps=60, batch_size=16, lr=1e-3, log_every=20)
    assert hist[0]['step'] == 1 and hist[-1]['step'] == 60
    first, last = hist[0]['loss'], np.mean([h['loss'] for h in hist[-2:]])
    assert last < 0.8 * first, hist
    assert not model.training
    policy = CILRSPolicy(model)
    out = policy({'image': d['image'][:5], 'speed': d['speed'][:5], 'command': d['command'][:5]})
    assert out.shape == (5, 2) and float(out.abs().max()) <= 1.0


def test_train_bc_rejects_mismatched_demos():
    d = _demos(4)
    d['act'] = d['act'][:3]
    with pytest.raises(ValueError, match='equally many'):
        train_bc(d, small_config(W, H), steps=1)
