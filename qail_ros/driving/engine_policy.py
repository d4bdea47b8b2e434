"""A CILRS engine file as a closed-loop driving policy: the node's code path without the topics.

    policy = EnginePolicy('models/cilrs-highway/cilrs_highway_w4a4_int8.safetensors')
    metrics = evaluate_engine(policy, 'highway', 'regular', routes=10)

`EnginePolicy` loads the engine with qail_ros.engines.load_engine (manifest checked, as the
cilrs_policy node does), feeds it the node's preprocessing (qail_ros.cilrs.config.
preprocess_frame) one frame at a time (engines take batch 1) and turns the command's branch
into (accel, steer) with the node's `postprocess`. So its closed-loop figures are what
`qail-ros launch cilrs_drive` should measure on the same routes; the difference is only the
transport (CDR float32 controls, speed and command arriving as separate messages).

    qail-ros driving eval ENGINE [--town highway] [--density regular] [--routes 10] \
        [--seed 0] [--view-m 50] [--json]
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

__all__ = ['EnginePolicy', 'evaluate_engine', 'outcome']


class EnginePolicy:
    """batch dict -> (B, 2) actions through a CILRS engine, one frame per inference."""

    needs_image = True

    def __init__(self, engine: str | Path | Any, threads: int = 1):
        from qail_ros.cilrs.config import CILRSConfig
        if isinstance(engine, (str, Path)):
            from qail_ros.engines import load_engine
            from qail_ros.share import resolve_share_path
            engine = load_engine(resolve_share_path(str(engine)), threads=threads,
                                 expect={'architecture': 'cilrs'})
        self.engine = engine
        self.config = CILRSConfig.from_dict(engine.manifest.architecture['config'])

    @property
    def image_size(self) -> tuple[int, int]:
        """(width, height) of the camera the engine takes."""
        return self.config.width, self.config.height

    def act(self, image: np.ndarray, speed: float, command: int) -> np.ndarray:
        """(accel, steer) in [-1, 1] for one frame, exactly as the node computes it."""
        from qail_ros.cilrs.config import postprocess, preprocess_frame, select_branch
        out = self.engine.infer(preprocess_frame(image, float(speed), self.config))
        return postprocess(select_branch(out['branches'], int(command)), self.config.head)[3]

    def __call__(self, batch: dict[str, Any]) -> np.ndarray:
        return np.stack([self.act(img, s, c) for img, s, c in
                         zip(batch['image'], batch['speed'], batch['command'])]
                        ).astype(np.float32)

    def __repr__(self) -> str:
        return f'EnginePolicy({self.engine.path.name}, {self.engine.precision})'


def evaluate_engine(policy: EnginePolicy, town: str = 'highway', density: str = 'regular',
                    routes: int = 10, seed: int = 0, *, view_m: float | None = None
                    ) -> dict[str, Any]:
    """Closed-loop metrics over routes seed..seed+routes-1 plus each route's outcome.

    view_m defaults to the camera the engine was trained with (manifest details.camera), else
    the env's 80 m."""
    from qail_ros.driving.closed_loop import episode_metrics, rollout
    if view_m is None:
        view_m = float(policy.engine.manifest.details.get('camera', {}).get('view_m', 80.0))
    r = rollout(policy, density, town, routes, seed, image_size=policy.image_size,
                record=False, view_m=view_m)
    m: dict[str, Any] = episode_metrics(r.infos)
    m['steps_per_s'] = round(r.steps_per_s, 1)
    m['episodes_detail'] = [{'seed': i.get('seed'), 'outcome': outcome(i),
                             'route_completion': round(float(i['route_completion']), 4),
                             'steps': i.get('steps')} for i in r.infos]
    return m


def outcome(info: dict[str, Any]) -> str:
    """How an episode ended (the word env_bridge logs)."""
    return next((k for k in ('success', 'collision', 'off_road', 'off_route', 'timeout')
                 if info.get(k)), 'unknown')
