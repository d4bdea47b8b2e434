"""Build models/openvla-tiny: a tiny randomly initialised OpenVLA checkpoint (HF layout).

    python scripts/openvla/make_tiny_checkpoint.py [--out models/openvla-tiny] [--seed 0]
    # a larger random checkpoint of the same layout (policy timing; 256 patches, ~106 M):
    python scripts/openvla/make_tiny_checkpoint.py --out /tmp/vla-medium --image-size 224 \
        --llm-hidden 1024 --llm-layers 8 --llm-heads 8 --max-positions 512 --std 0.02

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
    parser.add_argument('--std', type=float, default=0.1, help='weight init std (default 0.1)')
    for name in ('image-size', 'llm-hidden', 'llm-layers', 'llm-heads', 'max-positions'):
        parser.add_argument(f'--{name}', type=int, default=None,
                            help="a size of the tiny layout (default: the tiny model's)")
    args = parser.parse_args()
    from qail_ros.openvla.tiny import make_tiny_checkpoint
    keys = ('image_size', 'llm_hidden', 'llm_layers', 'llm_heads', 'max_positions')
    sizes = {k: getattr(args, k) for k in keys if getattr(args, k) is not None}
    path = make_tiny_checkpoint(args.out, seed=args.seed, shards=args.shards, std=args.std,
                                **sizes)
    total = sum(f.stat().st_size for f in path.iterdir())
    print(f'wrote {path} ({total / 1e6:.2f} MB): {sorted(f.name for f in path.iterdir())}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
