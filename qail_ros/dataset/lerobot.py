"""Export a qail_ros data set to the LeRobot v3.0 data set layout (`dataset export-lerobot`).

Layout written (facts read from huggingface/lerobot, `src/lerobot/datasets/utils.py`,
`dataset_metadata.py`, `feature_utils.py`, `io_utils.py`; CODEBASE_VERSION "v3.0"):

    meta/info.json                 codebase_version, fps, features, totals, chunks_size,
                                   data_files_size_in_mb, video_files_size_in_mb, data_path,
                                   video_path (null: images are stored in the data files),
                                   splits {"train": "0:k", "val": "k:n"} (episode ranges)
    meta/stats.json                per feature: min, max, mean, std, count (+ q01, q99);
                                   images per channel, shape (3, 1, 1), in [0, 1]
    meta/tasks.parquet             column task_index, pandas index 'task'
    meta/episodes/chunk-000/file-000.parquet
                                   episode_index, tasks, length, data/chunk_index,
                                   data/file_index, dataset_from_index, dataset_to_index,
                                   meta/episodes/chunk_index, meta/episodes/file_index,
                                   stats/<feature>/<stat> for the vector features
    data/chunk-000/file-000.parquet  one row per frame: observation.images.<name> (image:
                                   struct{bytes: png, path}), observation.state, action,
                                   teacher.raw_outputs (fixed-size float32 lists), timestamp,
                                   frame_index, episode_index, index, task_index, timestamp_ns

Episodes are written train first, then val, so each split is one episode range. `timestamp`
is frame_index / fps (LeRobot checks that timestamps sit on the fps grid); the measured
stamps are kept in `timestamp_ns`. Not verified here: loading the result with the `lerobot`
package itself (it is not installed in this environment); the structure test reads the files
with pyarrow and checks them against the layout above.
"""
from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import numpy as np

from qail_ros.errors import ParameterError

__all__ = ['export_lerobot', 'CODEBASE_VERSION']

CODEBASE_VERSION = 'v3.0'
CHUNKS_SIZE = 1000
DATA_FILE_MB = 100
VIDEO_FILE_MB = 200
DATA_PATH = 'data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet'
EPISODES_PATH = 'meta/episodes/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet'


def _pyarrow():
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise ParameterError('export-lerobot writes parquet and needs pyarrow: pip install '
                             'pyarrow (pinned in requirements.txt)') from None
    return pa, pq


def _png(rgb: np.ndarray) -> bytes:
    from PIL import Image as PILImage
    buf = io.BytesIO()
    PILImage.fromarray(rgb).save(buf, format='PNG', compress_level=1)
    return buf.getvalue()


def _next(chunk: int, file: int) -> tuple[int, int]:
    return (chunk + 1, 0) if file == CHUNKS_SIZE - 1 else (chunk, file + 1)


def _pandas_index_metadata(columns: list[tuple[str, str, str]], index: str) -> bytes:
    """The b'pandas' schema metadata that makes pandas read `index` back as the index."""
    return json.dumps({
        'index_columns': [index], 'column_indexes': [],
        'columns': [{'name': n, 'field_name': n, 'pandas_type': pt, 'numpy_type': nt,
                     'metadata': None} for n, pt, nt in columns],
        'creator': {'library': 'pyarrow', 'version': ''}, 'pandas_version': '2.2.0'}).encode()


def export_lerobot(dataset: str | Path, output: str | Path, fps: int | None = None,
                   robot_type: str | None = None) -> dict[str, Any]:
    """Write DATASET as a LeRobot v3.0 data set in OUTPUT; returns info.json's content."""
    from qail_ros.dataset.reader import ShardedArrays, load_manifest
    pa, pq = _pyarrow()
    src = Path(dataset)
    manifest = load_manifest(src)
    out = Path(output)
    if out.exists() and any(out.iterdir()):
        raise ParameterError(f'{out} exists and is not empty; choose a new directory')
    arrays = ShardedArrays(src, manifest)
    features_in = manifest['features']
    image_keys = [k for k in features_in if k.startswith('observation.images.')]
    vector_keys = [k for k in ('observation.state', 'observation.command', 'action',
                               'teacher.raw_outputs') if k in features_in]
    episodes = sorted(manifest['episodes'], key=lambda e: (e['split'] != 'train', e['index']))
    if fps is None:
        rates = [(e['frames'] - 1) / e['duration_s'] for e in episodes
                 if e['frames'] > 1 and e['duration_s'] > 0]
        fps = int(round(float(np.median(rates)))) if rates else 10
    if fps <= 0:
        raise ParameterError(f'fps must be > 0, not {fps}')
    tasks = manifest['tasks'] or ['']

    features: dict[str, dict] = {}
    for key in image_keys:
        h, w, c = features_in[key]['shape']
        features[key] = {'dtype': 'image', 'shape': [h, w, c],
                         'names': ['height', 'width', 'channels']}
    for key in vector_keys:
        features[key] = {'dtype': 'float32', 'shape': [int(np.prod(features_in[key]['shape']))],
                         'names': None}
    for key, dtype in (('timestamp', 'float32'), ('frame_index', 'int64'),
                       ('episode_index', 'int64'), ('index', 'int64'),
                       ('task_index', 'int64'), ('timestamp_ns', 'int64')):
        features[key] = {'dtype': dtype, 'shape': [1], 'names': None}

    image_struct = pa.struct([('bytes', pa.binary()), ('path', pa.string())])
    fields = [pa.field(k, image_struct) for k in image_keys]
    # LeRobot (datasets features) stores shape-[1] features as scalars, longer ones as lists
    scalar = {k for k in vector_keys if features[k]['shape'][0] == 1}
    fields += [pa.field(k, pa.float32() if k in scalar
                        else pa.list_(pa.float32(), features[k]['shape'][0]))
               for k in vector_keys]
    fields += [pa.field('timestamp', pa.float32())] + [
        pa.field(k, pa.int64()) for k in ('frame_index', 'episode_index', 'index', 'task_index',
                                          'timestamp_ns')]
    hf_features = {k: {'_type': 'Image'} for k in image_keys}
    hf_features.update({k: {'dtype': 'float32', '_type': 'Value'} if k in scalar else
                        {'feature': {'dtype': 'float32', '_type': 'Value'},
                         'length': features[k]['shape'][0], '_type': 'Sequence'}
                        for k in vector_keys})
    hf_features.update({k: {'dtype': features[k]['dtype'], '_type': 'Value'}
                        for k in ('timestamp', 'frame_index', 'episode_index', 'index',
                                  'task_index', 'timestamp_ns')})
    schema = pa.schema(fields, metadata={b'huggingface': json.dumps(
        {'info': {'features': hf_features}}).encode()})

    chunk, file = 0, 0
    writer = None
    file_bytes = 0
    ep_rows: list[dict[str, Any]] = []
    frame_total = 0
    # per image key and channel: min, max, sum, sum of squares, pixel count (in [0, 1])
    image_acc = {k: [np.full(3, np.inf), np.full(3, -np.inf), np.zeros(3), np.zeros(3), 0]
                 for k in image_keys}

    def open_writer():
        path = out / DATA_PATH.format(chunk_index=chunk, file_index=file)
        path.parent.mkdir(parents=True, exist_ok=True)
        return pq.ParquetWriter(str(path), schema)

    out.mkdir(parents=True, exist_ok=True)
    for new_index, ep in enumerate(episodes):
        if writer is not None and file_bytes >= DATA_FILE_MB * 1e6:
            writer.close()
            writer = None
            chunk, file = _next(chunk, file)
            file_bytes = 0
        if writer is None:
            writer = open_writer()
        first, n = ep['first_sample'], ep['frames']
        cols: dict[str, list] = {f.name: [] for f in fields}
        ep_vectors: dict[str, list[np.ndarray]] = {k: [] for k in vector_keys}
        for j in range(n):
            s = arrays.sample(first + j)
            for key in image_keys:
                rgb = np.asarray(s[key])
                png = _png(rgb)
                file_bytes += len(png)
                cols[key].append({'bytes': png, 'path': None})
                acc = image_acc[key]
                px = rgb.reshape(-1, 3).astype(np.float64) / 255.0
                acc[0] = np.minimum(acc[0], px.min(0))
                acc[1] = np.maximum(acc[1], px.max(0))
                acc[2] += px.sum(0)
                acc[3] += (px ** 2).sum(0)
                acc[4] += px.shape[0]
            for key in vector_keys:
                v = np.asarray(s[key], np.float32).ravel()
                cols[key].append(float(v[0]) if key in scalar else v.tolist())
                ep_vectors[key].append(v)
                file_bytes += v.nbytes
            cols['timestamp'].append(float(np.float32(j / fps)))
            cols['frame_index'].append(j)
            cols['episode_index'].append(new_index)
            cols['index'].append(frame_total + j)
            cols['task_index'].append(int(s['task_index']))
            cols['timestamp_ns'].append(int(s['timestamp_ns']))
        writer.write_table(pa.Table.from_pydict(cols, schema=schema))
        ep_tasks = sorted({tasks[t] for t in cols['task_index']})
        row: dict[str, Any] = {
            'episode_index': new_index, 'tasks': ep_tasks, 'length': n,
            'data/chunk_index': chunk, 'data/file_index': file,
            'dataset_from_index': frame_total, 'dataset_to_index': frame_total + n,
            'meta/episodes/chunk_index': 0, 'meta/episodes/file_index': 0,
            'qail_ros/source_episode': ep['index'], 'qail_ros/success': ep['success'],
        }
        for key, vals in ep_vectors.items():
            v = np.stack(vals).astype(np.float64)
            v = v[~np.isnan(v).any(axis=1)] if key == 'teacher.raw_outputs' else v
            if len(v):
                for stat, value in (('min', v.min(0)), ('max', v.max(0)), ('mean', v.mean(0)),
                                    ('std', v.std(0))):
                    row[f'stats/{key}/{stat}'] = value.tolist()
                row[f'stats/{key}/count'] = [int(len(v))]
        ep_rows.append(row)
        frame_total += n
    if writer is not None:
        writer.close()

    # meta/episodes
    ep_path = out / EPISODES_PATH.format(chunk_index=0, file_index=0)
    ep_path.parent.mkdir(parents=True, exist_ok=True)
    keys = list(dict.fromkeys(k for r in ep_rows for k in r))
    pq.write_table(pa.Table.from_pylist([{k: r.get(k) for k in keys} for r in ep_rows]),
                   str(ep_path))
    # meta/tasks.parquet: pandas DataFrame {task_index} indexed by task
    task_table = pa.table({'task_index': pa.array(range(len(tasks)), pa.int64()),
                           'task': pa.array(tasks, pa.string())})
    task_table = task_table.replace_schema_metadata({b'pandas': _pandas_index_metadata(
        [('task_index', 'int64', 'int64'), ('task', 'unicode', 'object')], 'task')})
    pq.write_table(task_table, str(out / 'meta' / 'tasks.parquet'))
    # meta/stats.json
    stats: dict[str, dict] = {}
    for key in vector_keys:
        vals = np.asarray(arrays.column(key), np.float64).reshape(len(arrays), -1)
        vals = vals[~np.isnan(vals).any(axis=1)]
        if len(vals):
            stats[key] = {'min': vals.min(0).tolist(), 'max': vals.max(0).tolist(),
                          'mean': vals.mean(0).tolist(), 'std': vals.std(0).tolist(),
                          'count': [int(len(vals))],
                          'q01': np.quantile(vals, 0.01, axis=0).tolist(),
                          'q99': np.quantile(vals, 0.99, axis=0).tolist()}
    for key, (lo, hi, s1, s2, count) in image_acc.items():
        if count:
            mean = s1 / count
            std = np.sqrt(np.maximum(s2 / count - mean ** 2, 0.0))
            stats[key] = {name: [[[float(x)]] for x in value] for name, value in
                          (('min', lo), ('max', hi), ('mean', mean), ('std', std))}
            stats[key]['count'] = [int(frame_total)]
    for key in ('frame_index', 'episode_index', 'index', 'task_index'):
        col = np.asarray(arrays.column(key if key != 'index' else 'sample_index'), np.float64)
        stats[key] = {'min': [float(col.min())], 'max': [float(col.max())],
                      'mean': [float(col.mean())], 'std': [float(col.std())],
                      'count': [int(len(col))]}
    (out / 'meta' / 'stats.json').write_text(json.dumps(stats, indent=1))
    n_train = sum(1 for e in episodes if e['split'] == 'train')
    splits = {'train': f'0:{n_train}'}
    if n_train < len(episodes):
        splits['val'] = f'{n_train}:{len(episodes)}'
    info = {
        'codebase_version': CODEBASE_VERSION, 'robot_type': robot_type, 'fps': int(fps),
        'total_episodes': len(episodes), 'total_frames': frame_total,
        'total_tasks': len(tasks), 'chunks_size': CHUNKS_SIZE,
        'data_files_size_in_mb': DATA_FILE_MB, 'video_files_size_in_mb': VIDEO_FILE_MB,
        'data_path': DATA_PATH, 'video_path': None, 'splits': splits, 'features': features,
    }
    (out / 'meta' / 'info.json').write_text(json.dumps(info, indent=4))
    return info
