"""`qail-ros train`, `qail-ros eval` and `qail-ros bench physics --quick` end to end."""
import json

import pytest

pytest.importorskip('dm_control', reason='dm_control (physics tasks) is not installed')
pytest.importorskip('qail_ros.quant', reason='qail_ros.quant (the quantizers) is not there yet')

from qail_ros.cli import main  # noqa: E402
from qail_ros.physics.models import shipped_tasks  # noqa: E402

TASK = 'cartpole-balance'
pytestmark = pytest.mark.skipif(TASK not in shipped_tasks(),
                                reason=f'no shipped FP policy for {TASK}')


def last_json(capsys):
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_train_then_eval(tmp_path, capsys):
    out = tmp_path / 'run'
    rc = main(['train', '--task', TASK, '--method', 'qail_wqbc', '--bits', 'w4a4', '--steps', '8',
               '--batch-size', '64', '--onpolicy-every', '4', '--onpolicy-episodes', '1',
               '--onpolicy-max-steps', '100', '--expert-episodes', '1',
               '--fp-episodes', '1', '--eval-episodes', '1', '--no-progress', '-o', str(out),
               '--json'])
    assert rc == 0
    summary = last_json(capsys)
    assert summary['method'] == 'qail_wqbc' and summary['bits'] == 'w4a4'
    assert summary['onpolicy_states'] == 200  # two rounds of 1 episode x 100 steps
    assert summary['eval']['episodes'] == 1 and summary['eval']['mean'] > 0
    for name in ('policy.safetensors', 'train.yaml', 'history.jsonl', 'summary.json'):
        assert (out / name).is_file()
    assert main(['eval', '--policy', str(out), '--episodes', '1', '--json']) == 0
    ev = last_json(capsys)
    assert ev['task'] == TASK and ev['method'] == 'qail_wqbc'
    # same student, same seed: the evaluation reproduces the training run's own
    assert ev['mean'] == pytest.approx(summary['eval']['mean'])


def test_eval_fp_and_errors(capsys):
    assert main(['eval', '--task', TASK, '--policy', 'fp', '--episodes', '1', '--json']) == 0
    assert last_json(capsys)['mean'] > 900  # the shipped FP policy balances
    assert main(['eval', '--policy', 'fp', '--episodes', '1']) == 2  # fp needs --task
    assert 'needs --task' in capsys.readouterr().err


def test_bench_physics_quick(tmp_path, capsys):
    """The CI smoke test: one task, tiny budget (about 7 s of one idle core)."""
    rc = main(['bench', 'physics', '--quick', '--out', str(tmp_path), '--no-progress',
               '--json'])
    assert rc == 0
    res = last_json(capsys)
    r = res['results'][TASK]
    assert {'fp', 'ptq_rtn', 'qail', 'qail_qbc', 'qail_wqbc'} <= set(r)
    for key in ('ptq_rtn', 'qail_qbc'):
        assert r[key]['bits'] == 'w4a4' and r[key]['episodes'] == 2 and r[key]['seeds'] == 1
        assert 0 < r[key]['mean'] <= 1000
    assert res['runs'][f'{TASK} w4a4']['commit']
    for ext in ('json', 'csv', 'md', 'png'):
        assert (tmp_path / f'physics.{ext}').is_file()
    check_physics_outputs(tmp_path, res)


def table_rows(md: str, first: str) -> tuple[list[str], list[list[str]]]:
    """The header and body rows (as cell lists) of the Markdown table whose header starts
    with `first`."""
    lines = md.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f'| {first} |'))
    cells = []
    for line in lines[start:]:
        if not line.startswith('|'):
            break
        cells.append([c.strip() for c in line.strip().strip('|').split('|')])
    return cells[0], cells[2:]


def check_physics_outputs(out, res):
    """Each method's figures are those of its own episode returns, and physics.md / .csv print
    them: ours from the JSON, the paper's columns from Table 7, mean retention recomputed."""
    import numpy as np

    from qail_ros.bench.physics import LABELS, PAPER_TABLE7
    r = res['results'][TASK]
    fp = r['fp']
    assert fp['mean'] > 900                      # the shipped FP policy balances
    head, rows = table_rows((out / 'physics.md').read_text(), 'Task')
    row = next(c for c in rows if c[0] == TASK)
    assert row[head.index('FP32 (ours)')] == f'{fp["mean"]:.0f} ± {fp["std"]:.0f}'
    csv = {tuple(line.split(',')[:3]): line.split(',')
           for line in (out / 'physics.csv').read_text().splitlines()[1:]}
    for key in ('ptq_rtn', 'qail', 'qail_qbc', 'qail_wqbc'):
        e = r[key]
        flat = [x for rs in e['returns'] for x in rs]
        assert len(flat) == e['episodes'] * e['seeds']
        assert e['mean'] == pytest.approx(np.mean(flat), abs=0.01)   # returns kept to 0.01
        assert e['std'] == pytest.approx(np.std(flat), abs=0.01)
        assert e['seed_means'] == pytest.approx([np.mean(rs) for rs in e['returns']], abs=0.01)
        assert e['retention'] == pytest.approx(e['mean'] / fp['mean'])
        col = head.index(f'{LABELS[key]} W4A4')
        assert row[col] == (f'{e["mean"]:.0f} ± {e["std"]:.0f} '
                            f'({100 * e["retention"]:.0f}%)'), key
        line = csv[(TASK, key, 'w4a4')]
        assert float(line[3]) == pytest.approx(e['mean'], abs=0.005)
        assert float(line[8]) == pytest.approx(e['retention'], abs=5e-5)
        mean_ret = next(c for c in rows if c[0] == '**mean retention**')
        assert mean_ret[col] == f'{100 * e["retention"]:.1f}%'    # one task: its retention
    paper = PAPER_TABLE7[TASK]
    assert row[-3:] == [str(paper['fp']), str(paper['lppd']), str(paper['qail_qbc'])]
    assert head[-3:] == ['paper FP32', 'paper LPPD INT4', 'paper QAIL+QBC INT4']


def test_bench_physics_merge_keeps_the_methods_it_did_not_run(tmp_path, capsys):
    base = ['bench', 'physics', '--quick', '--out', str(tmp_path), '--no-progress']
    assert main(base + ['--methods', 'fp,ptq_rtn']) == 0
    assert main(base + ['--methods', 'fp,qbc', '--merge']) == 0
    data = json.loads((tmp_path / 'physics.json').read_text())
    r = data['results'][TASK]
    assert {'fp', 'ptq_rtn', 'qbc'} <= set(r)
    assert r['ptq_rtn']['run'] != r['qbc']['run']
    assert {r['ptq_rtn']['run'], r['qbc']['run']} <= set(data['runs'])
    md = (tmp_path / 'physics.md').read_text()
    assert '| QBC W4A4 |' in md and '[fp,qbc]' in md


def test_train_needs_data_and_a_task_or_data_set(tmp_path, capsys):
    out = str(tmp_path / 'run')
    assert main(['train', '--task', TASK, '--expert-episodes', '0', '--fp-episodes', '0',
                 '-o', out]) == 2
    assert 'no training data' in capsys.readouterr().err
    assert main(['train', '-o', out]) == 2
    assert '--task walker-stand' in capsys.readouterr().err
    assert main(['train', '--data', str(tmp_path / 'nope'), '-o', out]) == 2
    assert 'not a qail_ros data set' in capsys.readouterr().err


def test_train_checkpoints_and_resumes_to_the_uninterrupted_student(tmp_path, capsys):
    """--precision / --grad-accum / --checkpoint-every / --resume: 4 steps, then 4 more from
    the checkpoint, give the student of 8 steps in one go (bit for bit, CPU)."""
    from safetensors.torch import load_file
    common = ['train', '--task', TASK, '--method', 'qail_qbc', '--bits', 'w4a4',
              '--batch-size', '64', '--grad-accum', '2', '--precision', 'fp32',
              '--onpolicy-every', '0', '--expert-episodes', '1', '--fp-episodes', '1',
              '--eval-episodes', '0', '--no-progress', '--checkpoint-every', '4']
    assert main(common + ['--steps', '8', '-o', str(tmp_path / 'full')]) == 0
    assert main(common + ['--steps', '4', '-o', str(tmp_path / 'part')]) == 0
    ck = tmp_path / 'part' / 'checkpoints'
    assert (ck / 'latest').read_text().strip() == 'step-00000004'
    assert main(common + ['--steps', '8', '--resume', str(ck), '-o',
                          str(tmp_path / 'part')]) == 0
    a = load_file(str(tmp_path / 'full' / 'policy.safetensors'))
    b = load_file(str(tmp_path / 'part' / 'policy.safetensors'))
    assert a.keys() == b.keys() and all(a[k].equal(b[k]) for k in a)
    hist = (tmp_path / 'part' / 'history.jsonl').read_text().splitlines()
    assert json.loads(hist[-1])['step'] == 8
    capsys.readouterr()
