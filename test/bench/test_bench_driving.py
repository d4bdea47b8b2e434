"""`qail-ros bench driving --quick` end to end: trains, evaluates, writes the json keys."""
import json

import pytest

pytest.importorskip('torch', reason='the driving benchmark trains torch models')
pytest.importorskip('highway_env', reason='the driving benchmark needs highway-env')


def test_quick_bench_writes_every_method_and_caches_the_fp_model(tmp_path, capsys):
    import argparse

    from qail_ros.bench import driving
    parser = argparse.ArgumentParser()
    parser.add_argument('--json', action='store_true')
    driving.add_arguments(parser)
    args = parser.parse_args(['--quick', '--out', str(tmp_path), '--no-progress', '--json'])
    assert driving.main(args) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    saved = json.loads((tmp_path / 'driving.json').read_text())
    assert saved['results'].keys() == result['results'].keys() == {
        'fp', 'ptq_rtn', 'qail', 'qail_qbc'}
    for key in ('command', 'commit', 'settings', 'model', 'date'):
        assert key in saved
    cell = saved['results']['qail_qbc']['metrics']['merge']['regular']
    for k in ('success_rate', 'collision_rate', 'route_completion'):
        assert 0.0 <= cell[k] <= 1.0 and len(cell['per_seed'][k]) == 1
    assert saved['results']['qail_qbc']['training'][0]['onpolicy_states'] > 0
    assert saved['results']['ptq_rtn']['training'][0]['skipped_layers'] == []
    assert saved['model']['gflops'] > 0 and not saved['model']['bc_cached']
    assert (tmp_path / 'cilrs_fp.safetensors').is_file()
    assert 'PTQ-RTN' in (tmp_path / 'driving.md').read_text()
    # a second run with the same settings reuses the FP model
    args = parser.parse_args(['--quick', '--out', str(tmp_path), '--no-progress',
                              '--methods', 'fp'])
    assert driving.main(args) == 0
    saved = json.loads((tmp_path / 'driving.json').read_text())
    assert saved['model']['bc_cached'] and set(saved['results']) == {'fp'}
