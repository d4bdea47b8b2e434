"""AttDiv = KL(S_q || S_fp) between normalised saliency maps, and its PNG output."""
import math

import numpy as np
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


def _decode_png(path):
    """The PNG as an (H, W, C) uint8 array, decoded by Pillow (an independent reader)."""
    from PIL import Image
    with Image.open(path) as im:
        assert im.format == 'PNG'
        return np.asarray(im.convert('RGB'))


def test_saliency_png_has_one_panel_per_map(tmp_path):
    pytest.importorskip('matplotlib', reason='the saliency figure is drawn with matplotlib')
    img = torch.rand(3, 32, 32)
    path = save_saliency_png([torch.rand(8, 8), torch.rand(8, 8), torch.rand(5)],
                             tmp_path / 'maps.png', titles=['fp', 'q', 'state'], image=img,
                             suptitle='AttDiv 0.01')
    px = _decode_png(path)
    assert px.shape == (320, 3 * 320, 3)            # 3.2 inch per map at 100 dpi
    for k in range(3):                               # every panel has something drawn in it
        assert (px[:, 320 * k:320 * (k + 1)] < 250).any(axis=2).mean() > 0.05
    # the state map is drawn as red bars
    red = (px[:, 640:, 0] > 150) & (px[:, 640:, 1] < 100) & (px[:, 640:, 2] < 100)
    assert red.sum() > 200


def _drawn_box(panel):
    """Row and column range of the non-white pixels of a panel (the heat map, no titles)."""
    rows = np.flatnonzero((panel < 250).any(axis=2).any(axis=1))
    cols = np.flatnonzero((panel < 250).any(axis=2).any(axis=0))
    return rows[0], rows[-1] + 1, cols[0], cols[-1] + 1


def test_saliency_heat_map_differs_exactly_where_the_maps_differ(tmp_path):
    pytest.importorskip('matplotlib', reason='the saliency figure is drawn with matplotlib')
    torch.manual_seed(0)
    fp = torch.rand(8, 8)
    fp[0, 0], fp[0, 1] = 0.0, 1.0                    # same colour scale for both maps
    q = fp.clone()
    q[4:, 4:] = 1.0 - fp[4:, 4:]                     # attention moves in the bottom-right only
    path = save_saliency_png([fp, q, fp], tmp_path / 'diff.png', titles=['', '', ''])
    px = _decode_png(path).astype(np.int16)
    assert px.shape == (320, 960, 3)
    panels = [px[:, 320 * k:320 * (k + 1)] for k in range(3)]
    heat = []
    for panel in panels:                             # each heat map, cropped where it is drawn
        r0, r1, c0, c1 = _drawn_box(panel)
        assert r1 - r0 > 200 and c1 - c0 > 200
        heat.append(panel[r0:r1, c0:c1])
    assert heat[0].shape == heat[1].shape == heat[2].shape
    np.testing.assert_array_equal(heat[2], heat[0])  # the same map draws the same pixels
    changed = (heat[1] != heat[0]).any(axis=2)
    h, w = changed.shape
    rows, cols = np.nonzero(changed)
    # every changed pixel is in the bottom-right quarter (a pixel of resampling slack) ...
    assert rows.min() >= h // 2 - 1 and cols.min() >= w // 2 - 1
    # ... and most of that quarter changed (an 8x8 map: cells of ~h/8 pixels)
    assert changed[h // 2 + 2:, w // 2 + 2:].mean() > 0.8
