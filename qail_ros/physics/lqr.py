"""An LQR expert for cartpole-balance, from the MuJoCo model linearised around upright.

The pole starts near upright in cartpole-balance, so a linear state-feedback controller is close
to optimal: the dynamics are linearised by central finite differences of the true MuJoCo step at
the upright equilibrium, over one control step, and the discrete-time Riccati equation gives the
gain.
No learning, seconds to compute, and it scores near the task's maximum (1000).
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn


def cartpole_state(obs: torch.Tensor) -> torch.Tensor:
    """Suite observation [x, cos th, sin th, xdot, thdot] -> LQR state [x, th, xdot, thdot]."""
    theta = torch.atan2(obs[..., 2], obs[..., 1])
    return torch.stack([obs[..., 0], theta, obs[..., 3], obs[..., 4]], -1)


class CartpoleLQR(nn.Module):
    """u = clip(-K s, -1, 1) on the state s = [x, theta, xdot, thetadot] (theta = 0 upright)."""

    def __init__(self, gain=None):
        super().__init__()
        self.register_buffer('gain', torch.zeros(1, 4) if gain is None
                             else torch.as_tensor(gain, dtype=torch.float32).reshape(1, 4))

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        s = cartpole_state(obs.float())
        return (-(s @ self.gain.T)).clamp(-1.0, 1.0)

    @classmethod
    def design(cls, q=(1.0, 10.0, 0.1, 0.1), r: float = 1.0, seed: int = 0) -> 'CartpoleLQR':
        """Linearise the cartpole-balance model at upright and solve the discrete LQR."""
        from scipy.linalg import solve_discrete_are

        a, b = linearize_upright(seed)
        qm, rm = np.diag(q), np.array([[r]])
        p = solve_discrete_are(a, b, qm, rm)
        return cls(np.linalg.solve(rm + b.T @ p @ b, b.T @ p @ a))

    def closed_loop_eigenvalues(self, seed: int = 0) -> np.ndarray:
        """|eig(A - B K)| of the linearised closed loop (all < 1 means locally stable)."""
        a, b = linearize_upright(seed)
        return np.abs(np.linalg.eigvals(a - b @ self.gain.numpy().astype(np.float64)))


def linearize_upright(seed: int = 0, eps: float = 1e-5) -> tuple[np.ndarray, np.ndarray]:
    """(A, B) of one control step at upright, state [x, theta, xdot, thetadot], by central
    finite differences of the true MuJoCo step (the model uses RK4, which mjd_transitionFD does
    not support)."""
    import mujoco

    from qail_ros.physics.tasks import make_env

    env = make_env('cartpole-balance', seed)
    env.reset()
    m = env.physics.model.ptr
    n_sub = int(env.env._n_sub_steps)
    data = mujoco.MjData(m)
    nq = m.nq

    def step(x: np.ndarray, u: np.ndarray) -> np.ndarray:
        mujoco.mj_resetData(m, data)
        data.qpos[:] = x[:nq]
        data.qvel[:] = x[nq:]
        data.ctrl[:] = u
        for _ in range(n_sub):
            mujoco.mj_step(m, data)
        return np.concatenate([data.qpos, data.qvel]).copy()

    x0, u0 = np.zeros(2 * nq), np.zeros(m.nu)
    a = np.zeros((2 * nq, 2 * nq))
    b = np.zeros((2 * nq, m.nu))
    for i in range(2 * nq):
        dx = np.zeros(2 * nq)
        dx[i] = eps
        a[:, i] = (step(x0 + dx, u0) - step(x0 - dx, u0)) / (2 * eps)
    for j in range(m.nu):
        du = np.zeros(m.nu)
        du[j] = eps
        b[:, j] = (step(x0, u0 + du) - step(x0, u0 - du)) / (2 * eps)
    return a, b
