"""Build models/openvla-tiny: a tiny randomly initialised OpenVLA checkpoint (HF layout).

    python scripts/openvla/make_tiny_checkpoint.py [--out models/openvla-tiny] [--seed 0]

Deterministic: the same seed gives the same tensors. See docs/openvla.md.
"""
import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--out', default=str(ROOT / 'models' / 'openvla-tiny'))
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--shards', type=int, default=2)
    args = parser.parse_args()
    from qail_ros.openvla.tiny import make_tiny_checkpoint
    path = make_tiny_checkpoint(args.out, seed=args.seed, shards=args.shards)
    total = sum(f.stat().st_size for f in path.iterdir())
    print(f'wrote {path} ({total / 1e6:.2f} MB): {sorted(f.name for f in path.iterdir())}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
