"""Saliency, state-importance scores, wQBC / SIS-QRD weights and the SIS cache."""
import pytest
import torch

from qail_ros.qail.saliency import (SISCache, canonical_weighting, compute_scores,
                                    gaussian_blur, image_saliency, importance_threshold,
                                    importance_weights, state_saliency, state_scores)


def top_left_policy(images):
    """Looks only at the top-left 8 x 8 pixels of a 16 x 16 image."""
    return images[:, :, :8, :8].sum(dim=(1, 2, 3)).unsqueeze(1)


def test_mean_patch_saliency_finds_the_region_the_policy_reads():
    torch.manual_seed(0)
    images = torch.rand(3, 2, 16, 16)
    maps = image_saliency(top_left_policy, images, perturbation='mean_patch', grid=4)
    assert maps.shape == (3, 4, 4)
    inside = maps[:, :2, :2]
    outside = maps.clone()
    outside[:, :2, :2] = 0
    assert (inside > 0).all()
    assert torch.count_nonzero(outside) == 0  # patches the policy never reads change nothing


def test_blur_saliency_peaks_where_the_policy_reads():
    torch.manual_seed(0)
    images = torch.rand(2, 1, 16, 16)
    maps = image_saliency(top_left_policy, images, perturbation='blur', grid=4, mask_sigma=2.0,
                          blur_sigma=1.5)
    assert maps.shape == (2, 4, 4)
    inside = maps[:, :2, :2].mean()
    far = maps[:, 2:, 2:].mean()
    assert inside > 20 * far
    flat_idx = maps.reshape(2, -1).argmax(1)
    assert all(int(i) // 4 < 2 and int(i) % 4 < 2 for i in flat_idx)


def test_gaussian_blur_keeps_constants_and_smooths_noise():
    const = torch.full((1, 3, 10, 10), 0.7)
    assert torch.allclose(gaussian_blur(const, 2.0), const, atol=1e-6)
    noise = torch.rand(1, 1, 32, 32)
    assert gaussian_blur(noise, 2.0).std() < 0.5 * noise.std()


def test_state_saliency_shift_is_exact_for_a_linear_policy():
    states = torch.randn(5, 4)
    std = torch.tensor([1.0, 2.0, 4.0, 1.0])
    mean = torch.zeros(4)

    def policy(x):
        return 3.0 * x[:, 2:3]

    maps = state_saliency(policy, states, perturbation='shift', scale=0.5, mean=mean, std=std)
    assert maps.shape == (5, 4)
    # moving dim 2 by 0.5 * 4 changes the output by 3 * 2 = 6: S = 0.5 * 36 on both sides
    assert torch.allclose(maps[:, 2], torch.full((5,), 18.0))
    assert torch.count_nonzero(maps[:, [0, 1, 3]]) == 0
    scores = state_scores(maps)
    assert torch.allclose(scores, torch.full((5,), 18.0 / 4))


def test_state_saliency_mean_and_groups():
    states = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    mean = torch.tensor([0.0, 0.0, 1.0, 0.0])

    def policy(x):
        return x[:, 2:3] + x[:, 3:4]

    maps = state_saliency(policy, states, perturbation='mean', mean=mean, std=torch.ones(4),
                          groups=[[0, 1], [2, 3]])
    # group [2, 3] set to (1, 0): output 7 -> 1, S = 0.5 * 36
    assert maps.tolist() == [[0.0, 18.0]]
    with pytest.raises(ValueError, match='groups'):
        state_saliency(policy, states, groups=[[0, 9]])


def test_threshold_and_weights():
    scores = torch.arange(100, dtype=torch.float32)
    t = importance_threshold(scores, subset_fraction=1.0)
    assert t == pytest.approx(79.2)
    w = importance_weights(scores, t, beta=2.0)
    assert int((w == 2.0).sum()) == 20 and int((w == 1.0).sum()) == 80
    # on a 10% subset: a percentile of 10 of the scores, reproducible for a seed
    t10 = importance_threshold(scores, subset_fraction=0.1, seed=3)
    assert t10 == importance_threshold(scores, subset_fraction=0.1, seed=3)
    assert 0 <= t10 <= 99 and t10 != t
    assert importance_weights(torch.tensor([1.0, 5.0]), 5.0, beta=3.0).tolist() == [1.0, 3.0]
    with pytest.raises(ValueError, match='beta'):
        importance_weights(scores, t, beta=0.5)


def test_weighting_names_are_one_mechanism():
    assert {canonical_weighting(n) for n in ('wqbc', 'sis', 'qrd')} == {'saliency'}
    assert canonical_weighting('none') == 'none'
    with pytest.raises(ValueError, match='weighting'):
        canonical_weighting('attention')


@pytest.mark.parametrize('suffix', ['.jsonl', '.safetensors'])
def test_sis_cache_round_trip_and_reuse(tmp_path, suffix):
    calls = []

    def policy(x):
        calls.append(len(x))
        return x[:, :1] * 2

    states = torch.randn(10, 3)
    cache = SISCache(meta={'perturbation': 'shift'})
    first = compute_scores(policy, states, ids=list(range(100, 110)), cache=cache,
                           batch_size=4, mean=torch.zeros(3), std=torch.ones(3))
    assert len(cache) == 10 and not torch.isnan(first).any()
    path = cache.save(tmp_path / f'sis{suffix}')
    loaded = SISCache.load(path)
    assert loaded.meta == {'perturbation': 'shift'}
    assert torch.allclose(loaded.get(range(100, 110)), first)
    calls.clear()
    again = compute_scores(policy, states, ids=list(range(100, 110)), cache=loaded)
    assert calls == [] and torch.allclose(again, first)  # all from the cache
    with pytest.raises(KeyError, match='7'):
        loaded.get([7])
