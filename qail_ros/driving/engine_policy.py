"""A CILRS engine file as a closed-loop driving policy: the node's code path without the topics.

    policy = EnginePolicy('models/cilrs-highway/cilrs_highway_w4a4_int8.safetensors')
    metrics = evaluate_engine(policy, 'highway', 'regular', routes=10)

`EnginePolicy` loads the engine with qail_ros.engines.load_engine (manifest checked, as the
cilrs_policy node does), feeds it the node's preprocessing (qail_ros.cilrs.config.
preprocess_frame) one frame at a time (engines take batch 1) and turns the command's branch
into (accel, steer) with the node's `postprocess`. So its closed-loop figures are what
`qail-ros launch cilrs_drive` should measure on the same routes; the difference is only the
transport (CDR float32 controls, speed and command arriving as separate messages).

    python -m qail_ros.driving.engine_policy ENGINE [--town highway] [--density regular] \
        [--routes 10] [--seed 0] [--view-m 50] [--json]
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ['EnginePolicy', 'evaluate_engine', 'main']


class EnginePolicy:
    """batch dict -> (B, 2) actions through a CILRS engine, one frame per inference."""

    needs_image = True

    def __init__(self, engine: str | Path | Any, threads: int = 1):
        from qail_ros.cilrs.config import CILRSConfig
        if isinstance(engine, (str, Path)):
            from qail_ros.engines import load_engine
            from qail_ros.nodes.cilrs_policy import resolve_engine_path
            engine = load_engine(resolve_engine_path(str(engine)), threads=threads,
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


def main(argv: list[str] | None = None) -> int:
    import argparse
    import json
    p = argparse.ArgumentParser(prog='python -m qail_ros.driving.engine_policy',
                                description='closed-loop metrics of a CILRS engine file')
    p.add_argument('engine')
    p.add_argument('--town', default='highway')
    p.add_argument('--density', default='regular')
    p.add_argument('--routes', type=int, default=10)
    p.add_argument('--seed', type=int, default=0, help='first route seed')
    p.add_argument('--view-m', type=float, default=None,
                   help="camera coverage in metres (default: the engine's manifest, else 80)")
    p.add_argument('--threads', type=int, default=1)
    p.add_argument('--json', action='store_true', help='print the result as one JSON line')
    args = p.parse_args(argv)
    try:
        import torch
        torch.set_num_threads(max(1, args.threads))
    except ImportError:
        pass
    policy = EnginePolicy(args.engine, threads=args.threads)
    m = evaluate_engine(policy, args.town, args.density, args.routes, args.seed,
                        view_m=args.view_m)
    for e in m['episodes_detail']:
        print(f"seed {e['seed']}: {e['outcome']}, route {100 * e['route_completion']:.0f}% "
              f"in {e['steps']} steps")
    print(f"{policy}: {args.town}/{args.density}, {m['episodes']} routes: success "
          f"{m['success_rate']:.2f}, collision {m['collision_rate']:.2f}, route completion "
          f"{m['route_completion']:.3f}")
    if args.json:
        print(json.dumps(m))
    return 0


if __name__ == '__main__':
    sys.exit(main())
