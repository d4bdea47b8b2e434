"""Table of bench/before_after.sh's runs: every timing and result of both checkouts, averaged
over the rounds, with after/before. Prints Markdown, then one JSON object as the last line.

    python bench/before_after.py bench-results/before_after
"""
from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path


def metrics(name: str, result: dict) -> dict[str, float]:
    """The figures of one run that the comparison is about."""
    if name == 'physics':
        out = {}
        for task, methods in result['results'].items():
            for method, row in methods.items():
                out[f'{task} {method} return'] = row['mean']
                if 'train_seconds' in row:
                    out[f'{task} {method} train_s'] = row['train_seconds']
        return out
    ends = {'decode': ('_ms_per_token', '_action_ms', '_prefill_ms'),
            'cilrs': ('_ms', '_cpu_ms', '_max_abs_diff_vs_fp32')}[name]
    return {k: float(v) for k, v in result.items()
            if k.endswith(ends) and isinstance(v, (int, float)) and not isinstance(v, bool)}


def main(out: Path) -> int:
    rows, summary = [], {}
    for name in ('decode', 'physics', 'cilrs'):
        sides: dict[str, dict[str, list[float]]] = {}
        for side in ('BEFORE', 'AFTER'):
            for path in sorted(out.glob(f'{name}.{side}.*.json')):
                text = path.read_text().strip()
                if not text.startswith('{'):
                    raise SystemExit(f'{path}: no JSON line (see {path.with_suffix(".log")})')
                for key, value in metrics(name, json.loads(text)).items():
                    sides.setdefault(side, {}).setdefault(key, []).append(value)
        before, after = sides.get('BEFORE', {}), sides.get('AFTER', {})
        for key in sorted(set(before) & set(after)):
            b, a = statistics.mean(before[key]), statistics.mean(after[key])
            ratio = a / b if b else float('nan')
            rows.append((name, key, b, a, ratio, len(before[key])))
            summary[f'{name}: {key}'] = {'before': b, 'after': a, 'ratio': ratio}
    print('| bench | figure | before | after | after/before | rounds |')
    print('|---|---|---:|---:|---:|---:|')
    for name, key, b, a, ratio, n in rows:
        print(f'| {name} | {key} | {b:.4g} | {a:.4g} | {ratio:.3f} | {n} |')
    checkouts = (out / 'checkouts.txt').read_text().split('\n') if (
        out / 'checkouts.txt').exists() else []
    print(json.dumps({'checkouts': [c for c in checkouts if c], 'figures': summary}))
    return 0


if __name__ == '__main__':
    if len(sys.argv) != 2:
        raise SystemExit(__doc__)
    raise SystemExit(main(Path(sys.argv[1])))
