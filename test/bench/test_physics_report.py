"""The physics benchmark's output files, from a made-up result (no training, no simulator)."""
import json

from qail_ros.bench.physics import _entry, write_outputs
from qail_ros.report import ANALYSIS_MARKER


def fake_result():
    fp = _entry('fp', 'fp32', [[1000.0, 990.0]], None, [])
    r = {'fp': fp,
         'ptq_rtn': _entry('ptq_rtn', 'w4a4', [[500.0, 700.0], [600.0, 600.0]], 995.0, [0.1]),
         'qail_qbc': _entry('qail_qbc', 'w4a4', [[990.0, 980.0], [985.0, 985.0]], 995.0,
                            [10.0], [{'attdiv': 0.01, 'gap': 0.02}]),
         'qail_qbc_w3a3': _entry('qail_qbc', 'w3a3', [[900.0, 800.0]], 995.0, [12.0])}
    return {'benchmark': 'physics', 'results': {'walker-stand': r},
            'runs': {'walker-stand w4a4': {'command': 'qail-ros bench physics --task walker-stand',
                                           'commit': 'abc123', 'date': 'now', 'seconds': 5,
                                           'settings': {'seeds': 2}}},
            'settings': {'main_bits': 'w4a4'}}


def test_entry_statistics():
    e = fake_result()['results']['walker-stand']['ptq_rtn']
    assert e['mean'] == 600.0 and e['seeds'] == 2 and e['episodes'] == 2
    assert e['seed_means'] == [600.0, 600.0] and e['seed_std'] == 0.0
    assert abs(e['retention'] - 600 / 995) < 1e-9


def test_outputs_table_paper_and_kept_analysis(tmp_path):
    files = write_outputs(fake_result(), tmp_path)
    md = (tmp_path / 'physics.md').read_text()
    assert '| walker-stand | 995 ± 5 | 600 ± 71 (60%) | 985 ± 4 (99%) |' in md
    assert '| 692 | 442 | 688 |' in md  # the paper's Table 7 row beside ours
    assert '## Stretch: W3A3' in md and '850 ± 50 (85%)' in md
    assert 'abc123' in md and '0.0100' in md
    assert json.loads((tmp_path / 'physics.json').read_text())['results']['walker-stand']
    assert (tmp_path / 'physics.csv').read_text().count('\n') == 5
    check_bar_plot(tmp_path / 'physics.png')
    # an analysis written below the marker survives the next write
    (tmp_path / 'physics.md').write_text(md + '\n' + ANALYSIS_MARKER + '\n## Analysis\nours\n')
    write_outputs(fake_result(), tmp_path)
    assert (tmp_path / 'physics.md').read_text().endswith('## Analysis\nours\n')
    assert set(files) == {'json', 'csv', 'md', 'png'}


def check_bar_plot(path):
    """physics.png, decoded: one 4.5 x 3.6 inch panel at 100 dpi with the FP32 bar grey,
    PTQ red and the QAIL bars blue; bar heights follow the means (FP32 995 > QAIL+QBC 985 >
    W3A3 850 > PTQ 600 on a 0-1050 axis)."""
    import numpy as np
    from PIL import Image
    with Image.open(path) as im:
        assert im.format == 'PNG'
        px = np.asarray(im.convert('RGB')).astype(int)
    assert px.shape == (360, 450, 3)

    def top(rgb):                       # top and bottom row of the bars in this colour
        match = np.abs(px - rgb).sum(axis=2) < 30
        cols = np.flatnonzero(match.sum(axis=0) > 50)   # bar bodies, not label text
        assert cols.size > 20, rgb
        rows = np.flatnonzero(match[:, cols].mean(axis=1) > 0.3)   # rows across the bars
        return rows[0], rows[-1]
    grey, red, blue = top((127, 127, 127)), top((214, 39, 40)), top((31, 119, 180))
    assert grey[1] == red[1] == blue[1]            # bars stand on the same axis
    assert grey[0] < red[0] and blue[0] < red[0]   # FP32 and QAIL+QBC above PTQ
    base = red[1]
    ratio = (base - red[0]) / (base - grey[0])
    assert abs(ratio - 600 / 995) < 0.05, ratio
