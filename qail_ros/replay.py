"""Offline A/B of engines on a recorded bag: what a user checks before an INT4 / W4A4 engine
goes on the robot (`qail-ros replay`).

    report = replay_bag(['fp32.safetensors', 'w4a4.safetensors'], 'episode_0', ReplayMap(...))

Every input the bag holds (a state vector, or a camera frame + instruction) is fed, in recorded
order, to each engine; its action is compared with the action recorded for that input (same
stamp) and with the other engines' actions. Engines:

* an engine file written by `qail-ros export` (or its manifest), architecture 'mlp': input
  `state`, output `action` (the state_policy node's engine);
* `openvla:PATH[@PRECISION]`, e.g. `openvla:models/openvla-tiny@int4`: OpenVLA (the vla_policy
  node's model) at fp32 | bf16 | int4 | int4_ort; its action tokens are compared too.

The map (YAML) names the bag's topics:

    state: /state                 # input of 'mlp' engines (policy_io array, or any vector type)
    image: /image_raw             # input of OpenVLA
    instruction: /instruction     # a topic, else `instruction_text`
    instruction_text: pick up the red block
    action: /action               # the recorded action (any dataset vector type)
    unnorm_key: bridge_orig       # OpenVLA data set statistics ('' = the checkpoint's only one)
    stamp_tolerance_ms: 0         # pair inputs and recorded actions within this
"""
from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from qail_ros.errors import BagError, ParameterError, check_known_keys

__all__ = ['ReplayMap', 'replay_bag', 'plot_replay', 'load_replay_engine']


@dataclasses.dataclass
class ReplayMap:
    action: str
    state: str = ''
    image: str = ''
    instruction: str = ''
    instruction_text: str = ''
    unnorm_key: str = 'bridge_orig'
    stamp_tolerance_ms: float = 0.0

    def __post_init__(self):
        if not self.action:
            raise ParameterError('replay map: name the recorded action topic under `action:`')
        if not (self.state or self.image):
            raise ParameterError('replay map: name the input topic: `state:` (mlp engines) or '
                                 '`image:` (OpenVLA)')

    @classmethod
    def load(cls, path: str | os.PathLike) -> 'ReplayMap':
        import yaml
        try:
            data = yaml.safe_load(Path(path).read_text()) or {}
        except OSError as exc:
            raise ParameterError(f"replay map '{path}' cannot be read: {exc.strerror}") from None
        check_known_keys(data, cls, 'replay map')
        return cls(**data)


class _MlpEngine:
    kind = 'state'

    def __init__(self, path: str):
        from qail_ros.engines import EngineError, load_engine
        try:
            self.engine = load_engine(path, expect={'architecture': 'mlp'})
        except EngineError as exc:
            raise ParameterError(f'engine {path}: {exc}') from None
        self.name = f'{Path(path).stem} ({self.engine.precision}, {self.engine.backend})'
        self.precision = self.engine.precision
        self.engine.warmup(3)

    def act(self, state: np.ndarray, _instruction: str = '') -> tuple[np.ndarray, None]:
        out = self.engine.infer({'state': state[None].astype(np.float32)})['action'][0]
        return np.asarray(out, np.float64), None


class _VlaEngine:
    kind = 'image'

    def __init__(self, spec: str, unnorm_key: str):
        from qail_ros.engines import EngineError, load_engine
        path, _, precision = spec[len('openvla:'):].partition('@')
        precision = precision or 'fp32'
        try:
            self.engine = load_engine(path, architecture='openvla', precision=precision,
                                      options={'unnorm_key': unnorm_key or None})
        except EngineError as exc:
            raise ParameterError(f'engine {spec}: {exc}') from None
        self.name = f'openvla {Path(path).name} ({precision})'
        self.precision = precision

    def act(self, frame: np.ndarray, instruction: str) -> tuple[np.ndarray, np.ndarray]:
        out = self.engine.infer({'image': frame, 'instruction': instruction})
        return np.asarray(out['action'], np.float64), np.asarray(out['tokens'])


def load_replay_engine(spec: str, unnorm_key: str = 'bridge_orig'):
    """An engine file (mlp) or `openvla:PATH[@PRECISION]`."""
    if spec.startswith('openvla:'):
        return _VlaEngine(spec, unnorm_key)
    return _MlpEngine(spec)


def _match(stamps: list[int], stamp: int, tol: int) -> int | None:
    import bisect
    i = bisect.bisect_left(stamps, stamp)
    near = [stamps[j] for j in (i - 1, i) if 0 <= j < len(stamps)]
    best = min(near, key=lambda x: abs(x - stamp), default=None)
    return best if best is not None and abs(best - stamp) <= tol else None


def _read_inputs(bag: str | os.PathLike, rmap: ReplayMap, kind: str):
    """[(stamp, input, instruction)], {stamp: recorded action} from the bag."""
    from qail_ros import image as im
    from qail_ros.bag import BagReader
    from qail_ros.dataset.extract import check_role_type, to_vector
    from qail_ros.recording import stamp_of
    topic = rmap.state if kind == 'state' else rmap.image
    if not topic:
        raise ParameterError(f"replay map: {'state' if kind == 'state' else 'image'} topic "
                             f'needed by this engine')
    with BagReader(bag) as reader:
        for t, role in ((topic, 'state' if kind == 'state' else 'images'),
                        (rmap.action, 'action')):
            if t not in reader.topics:
                raise BagError(f"bag {bag} has no topic '{t}'; it has {sorted(reader.topics)}")
            check_role_type(t, reader.topics[t].msgtype, role, str(bag))
        wanted = [topic, rmap.action] + ([rmap.instruction] if rmap.instruction else [])
        inputs, recorded = [], {}
        instruction = rmap.instruction_text
        for t, bag_t, msg in reader.messages(wanted):
            if t == rmap.instruction:
                instruction = msg.data
            elif t == rmap.action:
                recorded[stamp_of(msg) or bag_t] = to_vector(msg)
            elif kind == 'state':
                inputs.append((stamp_of(msg) or bag_t, to_vector(msg), instruction))
            else:
                rgb = np.ascontiguousarray(im.to_numpy(msg, desired='rgb8'))
                inputs.append((stamp_of(msg) or bag_t, rgb, instruction))
    if not inputs:
        raise BagError(f"bag {bag}: no message on '{topic}'")
    return inputs, recorded


def replay_bag(engines: list[str], bag: str | os.PathLike, rmap: ReplayMap,
               limit: int = 0, progress=None) -> dict[str, Any]:
    """Run `engines` over `bag`; the report (see the CLI, `qail-ros replay --help`)."""
    if not engines:
        raise ParameterError('name at least one engine')
    loaded = [load_replay_engine(spec, rmap.unnorm_key) for spec in engines]
    kinds = {e.kind for e in loaded}
    if len(kinds) > 1:
        raise ParameterError('the engines take different inputs (state vs image); replay '
                             'them separately')
    kind = kinds.pop()
    inputs, recorded = _read_inputs(bag, rmap, kind)
    if limit:
        inputs = inputs[:limit]
    rec_stamps = sorted(recorded)
    tol = int(rmap.stamp_tolerance_ms * 1e6)
    runs = []
    for spec, engine in zip(engines, loaded):
        actions, tokens, latency = [], [], []
        engine.act(inputs[0][1], inputs[0][2])      # warm-up: first-call costs are not latency
        for i, (_stamp, x, instruction) in enumerate(inputs):
            t0 = time.perf_counter()
            action, toks = engine.act(x, instruction)
            latency.append((time.perf_counter() - t0) * 1e3)
            actions.append(action)
            tokens.append(toks)
            if progress and (i + 1) % 50 == 0:
                progress(f'{engine.name}: {i + 1}/{len(inputs)}')
        runs.append({'spec': spec, 'engine': engine, 'actions': np.stack(actions),
                     'tokens': None if tokens[0] is None else np.stack(tokens),
                     'latency_ms': np.asarray(latency)})
    stamps = [s for s, _x, _i in inputs]
    pairs = [(i, _match(rec_stamps, s, tol)) for i, s in enumerate(stamps)]
    paired = [(i, s) for i, s in pairs if s is not None]
    rec_matrix = (np.stack([recorded[s] for _i, s in paired]) if paired else None)
    idx = [i for i, _s in paired]
    t0 = stamps[0]
    report: dict[str, Any] = {
        'bag': str(bag), 'inputs': len(inputs), 'input_topic': rmap.state or rmap.image,
        'action_topic': rmap.action, 'recorded_actions': len(recorded),
        'paired_with_recorded': len(paired), 'unpaired': len(inputs) - len(paired),
        'engines': [], 'agreement': [],
        '_series': {'t': [(s - t0) / 1e9 for s in stamps],
                    'recorded_t': [(s - t0) / 1e9 for _i, s in paired],
                    'recorded': rec_matrix},
    }
    for run in runs:
        acts = run['actions']
        lat = run['latency_ms']
        row: dict[str, Any] = {
            'engine': run['spec'], 'name': run['engine'].name,
            'precision': run['engine'].precision,
            'latency_ms': {'mean': float(lat.mean()), 'p50': float(np.median(lat)),
                           'p95': float(np.percentile(lat, 95)), 'max': float(lat.max())},
        }
        if rec_matrix is not None:
            if rec_matrix.shape[1] != acts.shape[1]:
                raise BagError(f'{run["spec"]}: actions have {acts.shape[1]} values, the '
                               f'recorded ones {rec_matrix.shape[1]}: is it the engine of '
                               'this robot?')
            err = np.abs(acts[idx] - rec_matrix)
            row['error_vs_recorded'] = {'mean': err.mean(0).tolist(), 'max': err.max(0).tolist(),
                                        'mean_all': float(err.mean()),
                                        'max_all': float(err.max())}
        report['engines'].append(row)
        report['_series'][run['spec']] = acts
    for a in range(len(runs)):
        for b in range(a + 1, len(runs)):
            x, y = runs[a], runs[b]
            diff = np.abs(x['actions'] - y['actions'])
            agree: dict[str, Any] = {'a': x['spec'], 'b': y['spec'],
                                     'a_name': x['engine'].name, 'b_name': y['engine'].name,
                                     'abs_diff_mean': diff.mean(0).tolist(),
                                     'abs_diff_max': diff.max(0).tolist()}
            if x['tokens'] is not None and y['tokens'] is not None:
                same = x['tokens'] == y['tokens']
                agree['identical_tokens'] = float(same.mean())
                agree['identical_actions'] = float(same.all(axis=1).mean())
            report['agreement'].append(agree)
    return report


def plot_replay(report: dict[str, Any], out: str | os.PathLike, title: str = '') -> Path:
    """A PNG: one panel per action dimension, each engine's actions over time beside the
    recorded ones."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    series = report['_series']
    specs = [e['engine'] for e in report['engines']]
    dims = series[specs[0]].shape[1]
    cols = min(dims, 4)
    rows = (dims + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(max(8.0, 4.2 * cols), max(3.6, 2.8 * rows)),
                             squeeze=False)
    for d in range(dims):
        ax = axes[d // cols][d % cols]
        if series['recorded'] is not None:
            ax.plot(series['recorded_t'], series['recorded'][:, d], 'o', color='black',
                    ms=3.5, alpha=0.5, label='recorded')
        for e in report['engines']:
            ax.plot(series['t'], series[e['engine']][:, d], lw=1.0, drawstyle='steps-post',
                    label=f"{e['name']}")
        ax.ticklabel_format(axis='y', useOffset=False, style='plain')
        ax.set_title(f'action[{d}]', fontsize=9)
        ax.set_xlabel('bag time (s)', fontsize=8)
        ax.tick_params(labelsize=7)
    for d in range(dims, rows * cols):
        axes[d // cols][d % cols].axis('off')
    axes[0][0].legend(fontsize=7, loc='best')
    fig.suptitle(title or f"replay of {Path(report['bag']).name}", fontsize=10)
    fig.tight_layout()
    out = Path(out)
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return out
