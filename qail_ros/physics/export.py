"""State-policy engines: an FP MLPPolicy or a QAIL student -> engine file + manifest.

    engine, manifest = export_policy('runs/qail/policy.safetensors', 'models/cartpole_w4a4',
                                     dataset='runs/ds')

- an FP MLPPolicy file (`qail_ros.physics.save_policy`)  -> `<name>.safetensors` on the 'torch'
  back end, precision fp32 (the reference, and what the recorder's FP policy node runs);
- a QAIL student (`qail-ros train`, W4A4 / W8A8 / W3A3 / W2A4) -> `<name>.safetensors` in
  `qail_ros.quant.save_quantized` form (packed integer weight codes + LSQ steps) on the
  'torch-int8' back end, which swaps every quantized layer for integer kernels.

The manifest (qail_ros.engines.manifest) records architecture 'mlp' + its config, precision,
back end, input 'state' [1, obs_dim] and output 'action' [1, act_dim], the normalisation (the
observation mean/std live inside the engine; the data set's action/state statistics are copied
when one is given), the sha256 of the source policy file, and in `details` the task, the
training config and the source data set's hash. Before returning, the engine is loaded the way a
node loads it and its actions are compared with the source model on states from the data set
(or the model's own normalisation): `details['export_check']` holds the largest difference.
"""
from __future__ import annotations

import hashlib
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from qail_ros.engines.base import EngineError

__all__ = ['export_policy', 'dataset_hash', 'describe', 'EXPORT_TOLERANCE']

#: largest |engine - source| action difference accepted (actions are in [-1, 1]); the int8
#: kernels match the fake-quant forward bit for bit, float reordering stays far below this.
EXPORT_TOLERANCE = 1e-4


def dataset_hash(root: str | Path) -> str:
    """sha256 of a data set's manifest.json (it lists every shard with its own hash)."""
    from qail_ros.dataset.builder import MANIFEST
    path = Path(root)
    path = path / MANIFEST if path.is_dir() else path
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _probe_states(policy, dataset: str | Path | None, n: int = 64) -> np.ndarray:
    if dataset is not None:
        from qail_ros.dataset.reader import ShardedArrays
        arrays = ShardedArrays(dataset)
        if 'observation.state' in arrays.keys:
            states = arrays.column('observation.state')
            idx = np.linspace(0, len(states) - 1, min(n, len(states))).astype(int)
            return states[idx].astype(np.float32)
    rng = np.random.default_rng(0)
    mean = policy.obs_mean.numpy()
    std = policy.obs_std.numpy()
    return (mean + std * rng.standard_normal((n, mean.size))).astype(np.float32)


def export_policy(source: str | Path, out_dir: str | Path, *, name: str | None = None,
                  dataset: str | Path | None = None, threads: int = 1) -> tuple[Path, Any]:
    """Write the engine of `source` into `out_dir`; returns (engine path, manifest)."""
    import torch
    from safetensors.torch import save_file

    from qail_ros import quant
    from qail_ros.engines.base import device_id
    from qail_ros.engines.manifest import Manifest, sha256_file, write_manifest, cache_key
    from qail_ros.engines.registry import backend_class, load_engine
    from qail_ros.qail.config import parse_bits
    from qail_ros.physics.qail_tasks import STUDENT_FORMAT, load_any_policy

    source = Path(source)
    if source.is_dir():  # a qail-ros train output, else a teacher directory (its FP policy)
        source = source / ('fp_policy.safetensors' if not (source / 'policy.safetensors').is_file()
                           and (source / 'fp_policy.safetensors').is_file()
                           else 'policy.safetensors')
    model, info = load_any_policy(source)
    student = info.get('format') == STUDENT_FORMAT
    arch = dict(info['architecture']) if student else dict(model.config)
    task = info.get('task') if student else (info.get('meta') or {}).get('task')
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if student:
        bits = str(info['config']['bits']).lower()
        w, a = parse_bits(bits)
        if a >= 16:
            raise EngineError(f'{source} is weight-only ({bits}): the int8 back end runs '
                              'weight-and-activation students (w4a4, w8a8, w3a3, w2a4); '
                              'train with --bits w4a4')
        precision, backend = bits, 'torch-int8'
    else:
        precision, backend = 'fp32', 'torch'
    if not name:
        from qail_ros.physics.tasks import task_slug
        name = f"{task_slug(task) if task else 'policy'}_{precision}"
    engine_path = out_dir / f'{name}.safetensors'
    with tempfile.TemporaryDirectory(dir=out_dir) as tmp:
        tmp_path = Path(tmp) / engine_path.name
        if student:
            quant.save_quantized(model, tmp_path)
        else:
            state = {k: v.detach().float().contiguous() for k, v in model.state_dict().items()}
            save_file(state, str(tmp_path), metadata={'format': 'qail_ros.engine.mlp/1'})
        tmp_path.replace(engine_path)
    cls = backend_class(backend)
    version, device = cls.backend_version(), device_id('cpu')
    source_hash = sha256_file(source)
    normalisation: dict[str, Any] = {
        'state': 'raw observation vector; the engine subtracts obs_mean and divides by '
                 'obs_std (stored in it)',
        'action': 'values in [-1, 1] (tanh output), the task\'s action scaling is the '
                  'consumer\'s'}
    details: dict[str, Any] = {'task': task, 'source_file': str(source),
                               'source_format': info.get('format')}
    if student:
        details['train_config'] = info.get('config')
        from qail_ros.quant.serialization import read_header
        details['quantization'] = read_header(engine_path)['config']
    if dataset is not None:
        from qail_ros.dataset.reader import load_manifest
        manifest_ds = load_manifest(dataset)
        details['source_dataset'] = str(dataset)
        details['source_dataset_hash'] = dataset_hash(dataset)
        stats = manifest_ds.get('stats', {})
        normalisation['dataset_stats'] = {k: stats[k] for k in ('observation.state', 'action')
                                          if k in stats}
    manifest = Manifest(
        engine_file=engine_path.name, engine_sha256=sha256_file(engine_path),
        architecture={'name': 'mlp', 'config': arch}, precision=precision, backend=backend,
        backend_version=version, device=device,
        inputs={'state': {'shape': [1, int(arch['obs_dim'])], 'dtype': 'float32'}},
        outputs={'action': {'shape': [1, int(arch['act_dim'])], 'dtype': 'float32'}},
        source_hash=source_hash, normalisation=normalisation,
        cache_key=cache_key(source_hash, backend, version, device, precision), details=details)
    write_manifest(manifest, out_dir)
    # load it as a node would and compare with the source model
    engine = load_engine(engine_path, threads=threads)
    states = _probe_states(model, dataset)
    with torch.no_grad():
        want = model.eval()(torch.from_numpy(states)).numpy()
    got = np.concatenate([engine.infer({'state': s[None]})['action'] for s in states])
    diff = float(np.abs(got - want).max())
    if not np.isfinite(diff) or diff > EXPORT_TOLERANCE:
        engine_path.unlink(missing_ok=True)
        Path(str(engine_path) + '.json').unlink(missing_ok=True)
        raise EngineError(f'exported engine disagrees with {source} by {diff:.3g} (more than '
                          f'{EXPORT_TOLERANCE:g}); nothing was written. This is a bug: please '
                          'report it with the policy file')
    manifest.details['export_check'] = {'states': int(len(states)), 'max_abs_diff': diff}
    write_manifest(manifest, out_dir)
    return engine_path, manifest


def describe(manifest) -> str:
    """One line for the CLI."""
    d = manifest.details
    check = d.get('export_check', {})
    return (f"{manifest.engine_file}: {manifest.precision} on {manifest.backend}, task "
            f"{d.get('task')}, max |engine - source| {check.get('max_abs_diff', float('nan')):.2g}"
            f" over {check.get('states', 0)} states")


def export_openvino_policy(source: str | Path, out_dir: str | Path, *,
                           precisions: tuple[str, ...] = ('fp32',), name: str | None = None,
                           dataset: str | Path | None = None, frames: int = 100,
                           holdout: int = 32, threads: int = 1) -> dict[str, tuple[Path, Any]]:
    """OpenVINO engines of an FP MLPPolicy (fp32 / bf16 / w8a8; w8a8 calibrated by NNCF on
    `frames` recorded states of `dataset`, else on states drawn from the policy's own
    normalisation). Each engine's manifest gets its accuracy against the source model on held
    out states (`details.accuracy`). Returns {precision: (engine path, manifest)}."""
    import torch

    from qail_ros.engines.cache import content_hash
    from qail_ros.engines.calibration import accuracy, recorded_frames
    from qail_ros.engines.manifest import read_manifest, write_manifest
    from qail_ros.engines.openvino_export import build_openvino_engines
    from qail_ros.engines.registry import load_engine
    from qail_ros.physics.qail_tasks import STUDENT_FORMAT, load_any_policy
    source = Path(source)
    if source.is_dir():
        source = source / 'policy.safetensors'
    model, info = load_any_policy(source)
    if info.get('format') == STUDENT_FORMAT:
        raise EngineError(f'{source} is a QAIL student: it runs on the torch-int8 back end '
                          '(qail-ros export without --backend); the openvino back end builds '
                          'engines of FP MLPPolicy files (fp32, bf16, or NNCF w8a8)')
    model = model.float().eval()
    arch = dict(model.config)
    task = (info.get('meta') or {}).get('task')
    if dataset is not None:
        rec = recorded_frames(dataset, frames=frames, holdout=holdout,
                              keys=['observation.state'])
        calib = [s['observation.state'].astype(np.float32) for s in rec.calibration]
        held = [s['observation.state'].astype(np.float32) for s in rec.holdout]
        frames_from = rec.source
    else:
        states = _probe_states(model, None, frames + holdout)
        calib, held = list(states[:frames]), list(states[frames:])
        frames_from = {'synthetic': 'states drawn from the policy normalisation'}
    feeds = [{'state': s.reshape(1, -1)} for s in calib]
    fields = {'architecture': {'name': 'mlp', 'config': arch},
              'inputs': {'state': {'shape': [1, int(arch['obs_dim'])], 'dtype': 'float32'}},
              'outputs': {'action': {'shape': [1, int(arch['act_dim'])], 'dtype': 'float32'}},
              'normalisation': {'state': 'raw observation vector; the engine subtracts '
                                         'obs_mean and divides by obs_std (stored in it)',
                                'action': 'values in [-1, 1] (tanh output)'},
              'details': {'task': task, 'source_file': str(source),
                          'source_format': info.get('format'), 'calibration': frames_from}}
    paths = build_openvino_engines(model, out_dir, name or f"{task or 'policy'}",
                                   fields=fields, source_hash=content_hash(source),
                                   example={'state': feeds[0]['state']},
                                   output_names=['action'], precisions=precisions,
                                   calibration=feeds if 'w8a8' in precisions else ())
    held_feeds = [{'state': s.reshape(1, -1)} for s in held] or feeds[:8]
    with torch.no_grad():
        ref = [{'action': model(torch.from_numpy(f['state'])).numpy()} for f in held_feeds]
    out = {}
    for precision, path in paths.items():
        acc = accuracy(load_engine(path, threads=threads), held_feeds, ref)
        engine_path, manifest = read_manifest(path)
        manifest.details['accuracy'] = {**acc, 'reference': f'the source policy {source.name}'}
        write_manifest(manifest, engine_path.parent)
        out[precision] = (engine_path, manifest)
    return out
