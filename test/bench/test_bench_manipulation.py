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


def test_mcnemar_exact_matches_hand_computed_values():
    from math import comb

    from qail_ros.manipulation.benchmark import mcnemar_exact
    assert abs(mcnemar_exact(7, 1) - 2 * (comb(8, 0) + comb(8, 1)) / 2 ** 8) < 1e-12
    assert abs(mcnemar_exact(7, 1) - 0.0703125) < 1e-12
    assert mcnemar_exact(1, 7) == mcnemar_exact(7, 1)          # two-sided, symmetric
    assert abs(mcnemar_exact(10, 0) - 2 / 2 ** 10) < 1e-15     # 0.00195
    assert mcnemar_exact(3, 3) == 1.0 and mcnemar_exact(0, 0) == 1.0   # capped / no evidence
    # a large, balanced-ish sample: exact binomial tail, b=60, c=35 -> p ~ 0.0134
    p = mcnemar_exact(60, 35)
    assert abs(p - 2 * sum(comb(95, i) for i in range(36)) / 2 ** 95) < 1e-12
    assert 0.01 < p < 0.02


def test_paired_comparisons_pair_episodes_and_seeds():
    from qail_ros.manipulation.benchmark import mcnemar_exact, paired_comparisons

    def seed(lift, place):
        return {'lift': {'outcomes': lift}, 'place': {'outcomes': place}}
    result = {'settings': {'tasks': ['lift', 'place']}, 'methods': {
        'fp': {'seeds': [seed([1, 1, 0, 1], [1, 0, 0, 0])]},
        'rtn_int4': {'seeds': [seed([0, 1, 0, 0], [0, 0, 1, 0])]},
        'qail_qbc_int4': {'seeds': [seed([1, 1, 0, 0], [1, 0, 0, 0]),
                                    seed([1, 0, 0, 1], [1, 1, 0, 0])]}}}
    rows = {(r['a'], r['b'], r['seed']): r for r in paired_comparisons(result)}
    assert set(rows) == {('qail_qbc_int4', 'rtn_int4', 0), ('qail_qbc_int4', 'rtn_int4', 1),
                         ('qail_qbc_int4', 'rtn_int4', 'pooled'), ('fp', 'rtn_int4', None),
                         ('fp', 'qail_qbc_int4', 0), ('fp', 'qail_qbc_int4', 1),
                         ('fp', 'qail_qbc_int4', 'pooled')}
    # fp 11011000 vs rtn 01000010: fp only at episodes 0, 3, 4; rtn only at 6
    r = rows[('fp', 'rtn_int4', None)]
    assert (r['a_only'], r['b_only'], r['both'], r['episodes']) == (3, 1, 1, 8)
    assert r['p'] == mcnemar_exact(3, 1) and r['diff'] == (4 - 2) / 8
    # seed 1 10011100 vs rtn 01000010: only-A at 0, 3, 4, 5; only-B at 1, 6;
    # seed 0 11001000: only-A at 0, 4; only-B at 6; pooled: both seeds' pairs
    assert (rows[('qail_qbc_int4', 'rtn_int4', 1)]['a_only'],
            rows[('qail_qbc_int4', 'rtn_int4', 1)]['b_only']) == (4, 2)
    assert (rows[('qail_qbc_int4', 'rtn_int4', 0)]['a_only'],
            rows[('qail_qbc_int4', 'rtn_int4', 0)]['b_only']) == (2, 1)
    pooled = rows[('qail_qbc_int4', 'rtn_int4', 'pooled')]
    assert (pooled['a_only'], pooled['b_only'], pooled['episodes']) == (6, 3, 16)
    # results written before outcomes were stored get no paired rows
    for m in result['methods'].values():
        for s in m['seeds']:
            del s['lift']['outcomes']
    assert paired_comparisons(result) == []


def test_reuse_students_evaluates_saved_adapters_without_training(tmp_path, capsys,
                                                                  monkeypatch):
    from qail_ros.cli import main as cli
    out = tmp_path / 'out'
    base = ['bench', 'manipulation', '--quick', '--tasks', 'lift', '--bits', '2',
            '--methods', 'fp,rtn_int4,qail_int4', '--episodes', '3', '--out', str(out),
            '--json']
    assert cli(base) == 0
    first = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    full = json.loads((out / 'manipulation_int2.json').read_text())
    for method in ('fp', 'rtn_int4', 'qail_int4'):
        res = full['methods'][method]['seeds'][0]['lift']
        assert len(res['outcomes']) == 3 and set(res['outcomes']) <= {0, 1}
        assert sum(res['outcomes']) == res['successes']
    assert {(r['a'], r['b']) for r in first['paired']} == {('fp', 'rtn_int4'),
                                                           ('fp', 'qail_int4')}
    assert (out / 'qail_int4_seed0_adapters.json').is_file()

    import qail_ros.manipulation.qail_vla as qv

    def no_training(*a, **k):
        raise AssertionError('--reuse-students must not train')
    monkeypatch.setattr(qv, 'train_qlora', no_training)
    assert cli(base + ['--reuse-students']) == 0
    captured = capsys.readouterr()
    assert 'reusing adapters' in captured.err and 'reusing' in captured.err
    again = json.loads((out / 'manipulation_int2.json').read_text())
    for method in ('fp', 'rtn_int4', 'qail_int4'):
        assert (again['methods'][method]['seeds'][0]['lift']['outcomes']
                == full['methods'][method]['seeds'][0]['lift']['outcomes'])
    training = again['methods']['qail_int4']['training'][0]
    assert training['reused_from'].endswith('qail_int4_seed0_adapters.safetensors')
    assert training['steps'] == full['methods']['qail_int4']['training'][0]['steps']

    # refused: other settings (the record), a rank the file does not hold, a missing seed
    assert cli(base + ['--reuse-students', '--qlora-steps', '5']) != 0
    err = capsys.readouterr().err
    assert 'qlora_steps=4 (now 5)' in err and 'drop --reuse-students' in err
    assert cli(base + ['--reuse-students', '--seeds', '2']) != 0
    err = capsys.readouterr().err
    assert 'qail_int4_seed1_adapters.safetensors is missing' in err
    assert cli(base + ['--reuse-students', '--retrain']) != 0
    assert 'drop one of the two' in capsys.readouterr().err
    # a record that disagrees with the file itself: the file's rank metadata wins
    side = out / 'qail_int4_seed0_adapters.json'
    rec = json.loads(side.read_text())
    rec['settings']['rank'] = 4
    side.write_text(json.dumps(rec))
    assert cli(base + ['--reuse-students', '--rank', '4']) != 0
    assert 'holds rank 8 alpha 8.0 adapters' in capsys.readouterr().err
    side.unlink()
    (out / 'manipulation_int2.json').unlink()
    assert cli(base + ['--reuse-students']) != 0
    assert 'no record of how' in capsys.readouterr().err
