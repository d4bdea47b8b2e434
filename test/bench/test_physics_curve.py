"""bench physics --curve: a student evaluated after N steps of a longer run is the student of a
run of N steps (constant learning rate, nothing depends on the total), and --merge
--first-seed joins training seeds."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip('dm_control', reason='needs dm-control (pip install dm-control==1.0.50)')
pytest.importorskip('torch')

ROOT = Path(__file__).resolve().parents[2]


def bench(*args) -> dict:
    proc = subprocess.run([sys.executable, '-m', 'qail_ros.cli', 'bench', 'physics', '--quick',
                           '--episodes', '1', '--no-progress', '--json', *map(str, args)],
                          cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env=dict(os.environ, MUJOCO_GL='disable'))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_curve_points_equal_separate_runs_and_seeds_merge(tmp_path):
    curve = bench('--methods', 'fp,qail_qbc', '--curve', '30,60', '--out', tmp_path / 'c')
    r = curve['results']['cartpole-balance']
    assert {'qail_qbc@30', 'qail_qbc@60'} <= set(r)
    single = bench('--methods', 'fp,qail_qbc', '--steps', 30, '--out', tmp_path / 's')
    assert r['qail_qbc@30']['returns'] == single['results']['cartpole-balance']['qail_qbc'][
        'returns']
    merged = bench('--methods', 'fp,qail_qbc', '--curve', '30,60', '--first-seed', 1,
                   '--merge', '--out', tmp_path / 'c')
    e = merged['results']['cartpole-balance']['qail_qbc@60']
    assert e['seeds'] == 2 and e['seed_ids'] == [0, 1]
    assert e['returns'][0] == r['qail_qbc@60']['returns'][0]
    assert (tmp_path / 'c' / 'physics_curve.png').is_file()
    assert 'Retention against training steps' in (tmp_path / 'c' / 'physics.md').read_text()
