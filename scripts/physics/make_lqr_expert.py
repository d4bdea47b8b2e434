"""Design the cartpole-balance LQR expert and ship it (seconds; no learning).

  python scripts/physics/make_lqr_expert.py
"""
from __future__ import annotations

import numpy as np

from qail_ros import physics
from qail_ros.physics.lqr import CartpoleLQR
from qail_ros.physics.models import save_expert

Q, R = (1.0, 10.0, 0.1, 0.1), 1.0


def main() -> int:
    lqr = CartpoleLQR.design(q=Q, r=R)
    eig = lqr.closed_loop_eigenvalues()
    rets = physics.evaluate(lqr, 'cartpole-balance', episodes=10, seed=0)
    meta = {'algorithm': 'LQR on the MuJoCo model linearised at upright (central finite '
                         'differences of one control step), discrete Riccati solution',
            'Q': list(Q), 'R': R, 'gain': lqr.gain.numpy().ravel().tolist(),
            'max_closed_loop_eig': float(eig.max()),
            'eval_return_mean': float(np.mean(rets)), 'eval_return_std': float(np.std(rets)),
            'eval_episodes': 10}
    print(meta)
    save_expert(lqr, 'cartpole-balance', 'lqr', meta)
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
