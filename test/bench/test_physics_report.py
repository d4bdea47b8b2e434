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
    assert (tmp_path / 'physics.png').read_bytes()[:4] == b'\x89PNG'
    # an analysis written below the marker survives the next write
    (tmp_path / 'physics.md').write_text(md + '\n' + ANALYSIS_MARKER + '\n## Analysis\nours\n')
    write_outputs(fake_result(), tmp_path)
    assert (tmp_path / 'physics.md').read_text().endswith('## Analysis\nours\n')
    assert set(files) == {'json', 'csv', 'md', 'png'}
