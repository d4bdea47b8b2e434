"""Clone a teacher directory's expert into its FP MLP: kept for old command lines, now
`qail-ros train-fp`.

  python scripts/physics/train_bc.py --teacher runs/teachers/walker-stand

Every argument is passed on to `qail-ros train-fp` (see its --help).
"""
from __future__ import annotations

import sys

from qail_ros.cli import main

if __name__ == '__main__':
    raise SystemExit(main(['train-fp', *sys.argv[1:]]))
