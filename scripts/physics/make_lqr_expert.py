"""Design the cartpole-balance LQR expert into a teacher directory (seconds; no learning).

  python scripts/physics/make_lqr_expert.py -o runs/teachers/cartpole-balance
  qail-ros train-fp --teacher runs/teachers/cartpole-balance --steps 10000

(The shipped models/physics/cartpole-balance/ was made this way, with that directory as -o.)
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from qail_ros import physics
from qail_ros.physics.lqr import CartpoleLQR
from qail_ros.physics.models import save_expert

Q, R = (1.0, 10.0, 0.1, 0.1), 1.0
TASK = 'cartpole-balance'


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('-o', '--out', required=True, help='teacher directory to write')
    args = p.parse_args()
    lqr = CartpoleLQR.design(q=Q, r=R)
    eig = lqr.closed_loop_eigenvalues()
    rets = physics.evaluate(lqr, TASK, episodes=10, seed=0)
    meta = {'algorithm': 'LQR on the MuJoCo model linearised at upright (central finite '
                         'differences of one control step), discrete Riccati solution',
            'Q': list(Q), 'R': R, 'gain': lqr.gain.numpy().ravel().tolist(),
            'max_closed_loop_eig': float(eig.max()),
            'eval_return_mean': float(np.mean(rets)), 'eval_return_std': float(np.std(rets)),
            'eval_episodes': 10}
    print(meta)
    out = Path(args.out)
    save_expert(lqr, TASK, 'lqr', meta, path=out / 'expert.safetensors')
    manifest = out / 'manifest.json'
    if not manifest.is_file():  # names the task for train-fp until it writes the full one
        manifest.write_text(json.dumps({'task': TASK}) + '\n')
    print(f'next: qail-ros train-fp --teacher {out} --steps 10000')
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
