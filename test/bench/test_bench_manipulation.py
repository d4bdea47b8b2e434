"""`qail-ros bench manipulation --quick`: the whole pipeline end to end at toy size."""
import json

import pytest

pytest.importorskip('mujoco')


def test_quick_run_writes_table_and_json(tmp_path, capsys):
    from qail_ros.cli import main as cli
    rc = cli(['bench', 'manipulation', '--quick', '--tasks', 'lift',
              '--methods', 'fp,awq_int4,qail_qbc_int4', '--episodes', '2',
              '--out', str(tmp_path / 'out'), '--write', str(tmp_path / 'docs'), '--json'])
    assert rc == 0
    out = capsys.readouterr().out
    last = json.loads(out.strip().splitlines()[-1])
    rows = {(r['method'], r['task']): r for r in last['summary']}
    assert set(rows) == {('fp', 'lift'), ('awq_int4', 'lift'), ('qail_qbc_int4', 'lift')}
    assert all(r['episodes'] == 2 and 0.0 <= r['success'] <= 1.0 for r in rows.values())
    full = json.loads((tmp_path / 'docs' / 'manipulation.json').read_text())
    training = full['methods']['qail_qbc_int4']['training'][0]
    assert training['onpolicy_states'] > 0 and training['trainable_params'] > 0
    assert (tmp_path / 'out' / 'fp' / 'config.json').is_file()
    assert (tmp_path / 'out' / 'qail_qbc_int4_seed0_adapters.safetensors').is_file()
    md = (tmp_path / 'docs' / 'manipulation.md').read_text()
    assert '| AWQ INT4 |' in md and 'QAIL+QBC INT4' in md
    # a second run reuses the FP checkpoint (same settings)
    rc = cli(['bench', 'manipulation', '--quick', '--tasks', 'lift', '--methods', 'fp',
              '--episodes', '1', '--out', str(tmp_path / 'out')])
    assert rc == 0
    assert 'reusing' in capsys.readouterr().err


def test_bad_method_is_refused(capsys):
    from qail_ros.cli import main as cli
    assert cli(['bench', 'manipulation', '--quick', '--methods', 'gptq']) != 0
    assert "--methods ['gptq']: choose among" in capsys.readouterr().err
