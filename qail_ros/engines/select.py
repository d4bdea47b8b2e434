"""`--backend auto`: measure candidate engines on this machine and keep the fastest accurate one.

    result = select_fastest(paths, holdout_feeds, reference, max_abs_diff=0.05, threads=1)
    record_choice(paths, result)     # every candidate's manifest gets its accuracy + latency,
                                     # the chosen one also `details.auto` (the whole table)

Accuracy: max and mean |engine - FP reference| over every output of the held-out feeds
(qail_ros.engines.calibration.accuracy). Latency: median ms at batch 1 and the given thread
count, the candidates timed round-robin in one process (a loaded machine slows all alike).
A candidate is eligible when its max abs difference is within the bound (the FP engines
always are, up to float reordering); the fastest eligible one is chosen.
"""
from __future__ import annotations

import platform
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from qail_ros.engines.base import EngineError
from qail_ros.engines.calibration import accuracy, time_engines

__all__ = ['select_fastest', 'record_choice', 'DEFAULT_MAX_ABS_DIFF']

#: default accuracy bound of `--backend auto` (max abs difference to FP on held-out frames)
DEFAULT_MAX_ABS_DIFF = 0.05


def select_fastest(paths: dict[str, Path], feeds: Sequence[dict[str, np.ndarray]],
                   reference: Sequence[dict[str, np.ndarray]], *,
                   max_abs_diff: float = DEFAULT_MAX_ABS_DIFF, threads: int = 1,
                   runs: int = 20, warmup: int = 3) -> dict[str, Any]:
    """{'chosen', 'bound', 'candidates': {kind: {ms, p90_ms, max_abs_diff, mean_abs_diff,
    eligible, backend, precision}}, ...}. EngineError when no candidate is within the bound."""
    from qail_ros.engines.registry import load_engine
    if not feeds:
        raise EngineError('--backend auto needs held-out frames to judge accuracy: give '
                          '--calibration DATASET (or held-out feeds)')
    engines = {k: load_engine(p, threads=threads) for k, p in paths.items()}
    acc = {k: accuracy(e, feeds, reference) for k, e in engines.items()}
    timing = time_engines(engines, feeds[0], runs=runs, warmup=warmup)
    table: dict[str, dict[str, Any]] = {}
    for k, e in engines.items():
        table[k] = {'backend': e.backend, 'precision': e.precision,
                    **{n: round(v, 4) for n, v in timing[k].items()},
                    'max_abs_diff': acc[k]['max_abs_diff'],
                    'mean_abs_diff': acc[k]['mean_abs_diff'],
                    'eligible': bool(acc[k]['max_abs_diff'] <= max_abs_diff)}
    eligible = [k for k, r in table.items() if r['eligible']]
    if not eligible:
        worst = ', '.join(f"{k} {r['max_abs_diff']:.3g}" for k, r in table.items())
        raise EngineError(f'no candidate engine is within max abs difference {max_abs_diff:g} '
                          f'of FP on the held-out frames ({worst}): raise the bound '
                          '(--max-abs-diff) or calibrate on more recorded frames')
    chosen = min(eligible, key=lambda k: table[k]['ms'])
    return {'chosen': chosen, 'bound': {'max_abs_diff': max_abs_diff},
            'holdout_frames': len(feeds), 'threads': threads, 'runs': runs,
            'machine': platform.machine(),
            'measured_at': time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime()),
            'candidates': table}


def record_choice(paths: dict[str, Path], result: dict[str, Any],
                  extra: dict[str, Any] | None = None) -> Path:
    """Write each candidate's measurement into its manifest (`details.measured`) and the whole
    selection into the chosen engine's (`details.auto`); returns the chosen engine's path."""
    from qail_ros.engines.manifest import read_manifest, write_manifest
    for kind, path in paths.items():
        engine_path, manifest = read_manifest(path)
        row = result['candidates'][kind]
        manifest.details['measured'] = {**row, 'threads': result['threads'],
                                        'holdout_frames': result['holdout_frames'],
                                        **(extra or {})}
        if kind == result['chosen']:
            manifest.details['auto'] = {**result, **(extra or {})}
        else:
            manifest.details.pop('auto', None)
        write_manifest(manifest, engine_path.parent)
    return paths[result['chosen']]
