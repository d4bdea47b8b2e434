"""The documented pipeline, record -> dataset -> train -> export -> launch, at CI size.

Runs scripts/walkthrough.sh (docs/walkthrough.md) with TINY=1 on the embedded default (nodes as
separate processes over Zenoh): the FP engine drives cartpole-balance while fp_recorder records
three 100-step episodes, the bags become a data set, QAIL + QBC trains a W4A4 student on it, the
student is exported to an int8-kernel engine, and physics_drive runs that engine closed-loop.
"""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip('dm_control', reason='needs dm-control (pip install dm-control==1.0.50)')

ROOT = Path(__file__).resolve().parents[1]


def test_walkthrough_end_to_end(tmp_path):
    from qail_ros.engines import load_engine
    from qail_ros.physics.export import dataset_hash
    out = tmp_path / 'wt'
    env = dict(os.environ, TINY='1', OUT=str(out), QAIL_ROS=f'{sys.executable} -m qail_ros.cli',
               PYTHONUNBUFFERED='1')
    proc = subprocess.run(['bash', str(ROOT / 'scripts' / 'walkthrough.sh')], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    # 1. record: three complete episodes, every action paired with its frame
    bags = sorted((out / 'bags').iterdir())
    assert len(bags) == 3
    assert re.findall(r'unmatched actions (\d+)', log) == ['0', '0', '0']
    # 2. data set: 3 x 100 samples with state, action and the teacher's raw outputs (a policy
    # slow to start may also answer a re-sent copy of the first state: one more real sample)
    manifest = json.loads((out / 'dataset' / 'manifest.json').read_text())
    assert len(manifest['episodes']) == 3
    assert [e['frames'] for e in manifest['episodes']][1:] == [100, 100]
    assert manifest['episodes'][0]['frames'] in (100, 101, 102)
    assert {'observation.state', 'action', 'teacher.raw_outputs',
            'observation.images.image'} <= set(manifest['features'])
    assert manifest['tasks'] == ['cartpole-balance']
    # 3./4. the exported engine names its source data set and is a W4A4 int8-kernel engine
    engine = load_engine(out / 'engines' / 'w4a4.safetensors')
    assert (engine.precision, engine.backend) == ('w4a4', 'torch-int8')
    details = engine.manifest.details
    assert details['source_dataset_hash'] == dataset_hash(out / 'dataset')
    assert details['export_check']['max_abs_diff'] == 0.0
    summary = json.loads((out / 'train' / 'summary.json').read_text())
    assert summary['data']['fp'] >= 200          # the two train-split episodes
    # 5. launch: state_policy loaded that engine and the bridge ran both episodes
    drive = (out / 'drive.log').read_text()
    assert 'w4a4 on torch-int8 (w4a4.safetensors)' in drive
    returns = [float(r) for r in re.findall(r'episode \d \(seed \d+\): return ([\d.]+)', drive)]
    assert len(returns) == 2 and min(returns) > 90        # 100 steps, reward <= 1 each
    assert 'physics_bridge exited (on_exit=Shutdown)' in drive


def test_lerobot_export_types_follow_lerobot_rules(tmp_path):
    """LeRobot (its `datasets` features) reads a shape-[1] feature as a scalar and a longer one
    as a fixed-length list; a list of length 1 made LeRobotDataset 0.4.4 fail to load the export
    of a cartpole data set (1 action). Checked against lerobot itself by hand (docs/dataset.md)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from qail_ros.dataset import build_dataset, export_lerobot
    from qail_ros.physics.export import export_policy
    from qail_ros.physics.models import task_dir
    engine, _ = export_policy(task_dir('cartpole-balance') / 'fp_policy.safetensors',
                              tmp_path / 'engines', name='fp32')
    bags = tmp_path / 'bags'
    proc = subprocess.run(
        [sys.executable, '-m', 'qail_ros.cli', 'launch', 'physics_record', '--composed',
         f'engine:={engine}', 'episodes:=1', 'max_steps:=20', f'output_dir:={bags}'],
        cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    build_dataset([bags], tmp_path / 'ds', val_fraction=0.0)
    info = export_lerobot(tmp_path / 'ds', tmp_path / 'lr')
    assert info['features']['action']['shape'] == [1]
    assert info['features']['observation.state']['shape'] == [5]
    table = pq.read_table(tmp_path / 'lr' / 'data' / 'chunk-000' / 'file-000.parquet')
    assert table.schema.field('action').type == pa.float32()
    assert table.schema.field('observation.state').type == pa.list_(pa.float32(), 5)
    hf = json.loads(table.schema.metadata[b'huggingface'])['info']['features']
    assert hf['action'] == {'dtype': 'float32', '_type': 'Value'}
    assert hf['observation.state']['_type'] == 'Sequence'
    assert table.num_rows == 20
