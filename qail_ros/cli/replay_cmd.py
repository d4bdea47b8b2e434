"""`qail-ros replay ENGINE... --bag BAG --topic-map MAP`: engines A/B'd offline on a recorded bag.

Runs each engine over the bag's inputs in recorded order (qail_ros.replay) and prints, per
engine, the error of its actions against the recorded ones (per dimension, mean and max) and
its latency, then the agreement between engines (mean / max action difference; for OpenVLA the
share of identical action tokens). `--json` prints one JSON object as the last line; `--plot
out.png` draws each engine's actions over time beside the recorded ones. docs/replay.md.

    qail-ros replay fp32.safetensors w4a4.safetensors --bag runs/bags/ep0 --topic-map map.yaml
    qail-ros replay openvla:models/openvla-tiny@fp32 openvla:models/openvla-tiny@int4 \\
        --bag vla_bag --topic-map vla_map.yaml --plot replay.png
"""
from __future__ import annotations

import json
import sys

HELP = 'run engines over a recorded bag and compare their actions (offline A/B)'


def add_arguments(parser) -> None:
    parser.add_argument('engines', nargs='+', metavar='ENGINE',
                        help="engine file (architecture mlp) or 'openvla:PATH[@PRECISION]'")
    parser.add_argument('--bag', required=True, help='the recorded bag')
    parser.add_argument('--topic-map', required=True, metavar='MAP',
                        help='YAML: state / image, instruction, action topics (docs/replay.md)')
    parser.add_argument('--limit', type=int, default=0,
                        help='replay only the first N inputs (0 = all)')
    parser.add_argument('--threads', type=int, default=1,
                        help="torch threads (default 1, the nodes' default; 0 = torch's)")
    parser.add_argument('--json', action='store_true', help='print one JSON object last')
    parser.add_argument('--plot', default=None, metavar='PNG',
                        help="write a PNG of each engine's actions over time")


def _fmt(values, width=7) -> str:
    return ' '.join(f'{v:{width}.4f}' for v in values)


def _markdown_table(headers: list[str], rows: list[list[str]]) -> None:
    """Print a blank line, then a Markdown table."""
    print()
    print('| ' + ' | '.join(headers) + ' |')
    print('|' + '---|' * len(headers))
    for row in rows:
        print('| ' + ' | '.join(row) + ' |')


def main(args) -> int:
    from qail_ros.replay import ReplayMap, plot_replay, replay_bag
    if args.threads:
        import torch
        torch.set_num_threads(args.threads)
    rmap = ReplayMap.load(args.topic_map)
    report = replay_bag(args.engines, args.bag, rmap, limit=args.limit,
                        progress=None if args.json else
                        (lambda line: print(line, file=sys.stderr)))
    if args.plot:
        report['plot'] = str(plot_replay(report, args.plot))
    report.pop('_series')
    if args.json:
        print(json.dumps(report))
        return 0
    print(f'bag {report["bag"]}: {report["inputs"]} inputs on {report["input_topic"]}, '
          f'{report["paired_with_recorded"]} paired with a recorded action on '
          f'{report["action_topic"]} ({report["unpaired"]} unpaired)')
    rows = []
    for e in report['engines']:
        err = e.get('error_vs_recorded')
        lat = e['latency_ms']
        cells = ([_fmt(err['mean'], 0), _fmt(err['max'], 0), f'{err["mean_all"]:.4f}',
                  f'{err["max_all"]:.4f}'] if err else ['-'] * 4)
        rows.append([e['name'], *cells, f'{lat["mean"]:.2f} / {lat["p95"]:.2f}'])
    _markdown_table(['engine', 'error vs recorded, mean per dim', 'max per dim', 'mean', 'max',
                     'latency ms mean / p95'], rows)
    if report['agreement']:
        rows = []
        for a in report['agreement']:
            tok = a.get('identical_tokens')
            act = a.get('identical_actions')
            rows.append([f'{a["a_name"]} vs {a["b_name"]}', _fmt(a['abs_diff_mean'], 0),
                         _fmt(a['abs_diff_max'], 0), '-' if tok is None else f'{tok:.1%}',
                         '-' if act is None else f'{act:.1%}'])
        _markdown_table(['engines', 'mean abs diff per dim', 'max abs diff per dim',
                         'identical tokens', 'identical actions'], rows)
    if args.plot:
        print(f'\nplot: {report["plot"]}')
    return 0
