"""AttDiv = KL(S_q || S_fp) between normalised saliency maps, and its PNG output."""
import math

import pytest
import torch

from qail_ros.qail.attdiv import attdiv, normalize_map, save_saliency_png


def test_attdiv_zero_for_identical_maps_and_scale_invariant():
    m = torch.rand(4, 8, 8)
    assert attdiv(m, m).item() == pytest.approx(0.0, abs=1e-7)
    assert attdiv(m, 3 * m).item() == pytest.approx(0.0, abs=1e-6)  # normalised first


def test_attdiv_positive_and_matches_hand_value():
    p = torch.tensor([[1.0, 3.0]])
    q = torch.tensor([[1.0, 1.0]])
    expected = 0.25 * math.log(0.25 / 0.5) + 0.75 * math.log(0.75 / 0.5)
    assert attdiv(p, q, eps=0).item() == pytest.approx(expected, rel=1e-5)
    assert attdiv(p, q).item() > 0
    assert attdiv(p, q).item() != pytest.approx(attdiv(q, p).item())  # KL is not symmetric
    per = attdiv(torch.rand(3, 5), torch.rand(3, 5), reduction='none')
    assert per.shape == (3,) and (per >= 0).all()


def test_normalize_and_errors():
    n = normalize_map(torch.tensor([[0.0, 2.0, -1.0]]), eps=0)
    assert n.tolist() == [[0.0, 1.0, 0.0]]
    with pytest.raises(ValueError, match='shape'):
        attdiv(torch.rand(2, 4), torch.rand(2, 5))


def test_saliency_png_written(tmp_path):
    img = torch.rand(3, 32, 32)
    path = save_saliency_png([torch.rand(8, 8), torch.rand(8, 8), torch.rand(5)],
                             tmp_path / 'maps.png', titles=['fp', 'q', 'state'], image=img,
                             suptitle='AttDiv 0.01')
    data = path.read_bytes()
    assert data[:8] == b'\x89PNG\r\n\x1a\n' and len(data) > 1000
