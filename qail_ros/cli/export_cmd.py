"""`qail-ros export`: a trained policy -> an engine file + manifest that the policy nodes load.

    qail-ros export runs/qail -o models/cartpole --data runs/ds        # W4A4 student, int8
    qail-ros export models/physics/cartpole-balance/fp_policy.safetensors -o models/cartpole
    qail-ros export fp --task cartpole-balance -o models/cartpole    # the shipped FP policy
    qail-ros export runs/swingup -o engines     # a teacher directory (train-expert): its FP
    qail-ros export cilrs -o models/cilrs --kinds w8a8_ort    # a seeded, untrained CILRS

POLICY is a `qail-ros train` output directory or policy.safetensors (a QAIL student: W4A4 /
W8A8 / W3A3 / W2A4 -> the 'torch-int8' back end) or an FP MLPPolicy file (-> 'torch', fp32).
A CILRS checkpoint (qail_ros.cilrs save_checkpoint) builds CILRS engines, a ConvActionRegressor
file or an OpenVLA checkpoint directory builds OpenVINO engines (conv policy / vision towers;
the towers also as an onnxruntime graph or, on an NVIDIA GPU, a TensorRT plan):

    qail-ros export cilrs.safetensors -o engines --backend auto --calibration runs/ds
    qail-ros export cilrs.safetensors -o engines --backend openvino --precision w8a8 \
        --calibration runs/ds --frames 100
    qail-ros export fp_policy.safetensors -o engines --backend openvino --precision w8a8 \
        --calibration runs/ds
    qail-ros export models/openvla-tiny -o engines/vla --backend onnxruntime   # or tensorrt

--calibration DATASET calibrates every INT8 engine (NNCF for OpenVINO, onnxruntime's static
quantization) on --frames recorded frames of a `qail-ros dataset build` data set and reports
each engine's max / mean abs difference to FP on held-out frames (also in its manifest);
--backend auto builds every engine this machine runs and keeps the fastest within
--max-abs-diff (measurements and choice in the manifest).
CILRS: --kinds picks engine kinds (default the standard set), --w4a4-student adds the trained
W4A4 student; POLICY 'cilrs' is a seeded, untrained CILRS of --resnet / --height / --width (real
latency, meaningless driving).
Writes OUT/NAME.safetensors and OUT/NAME.safetensors.json (architecture, precision, back end,
input spec, normalisation, source policy and data set hashes), after checking that the engine,
loaded as the state_policy node loads it, gives the source model's actions.
"""
from __future__ import annotations

from qail_ros.cli.common import add_teacher_argument

HELP = 'export a trained policy to an engine file + manifest (for state_policy)'


def add_arguments(parser):
    parser.add_argument('policy', help="qail-ros train output (dir or policy.safetensors), an "
                                       "FP MLPPolicy .safetensors, a teacher directory "
                                       "(qail-ros train-expert: its FP policy), a CILRS "
                                       "checkpoint, 'fp' with --task / --teacher, or 'cilrs' "
                                       "(a seeded, untrained CILRS)")
    parser.add_argument('--task', default=None, help="physics task of POLICY 'fp'")
    add_teacher_argument(parser, "whose FP policy POLICY 'fp' means (default: the task's shipped "
                                 'one)')
    parser.add_argument('-o', '--out', required=True, help='directory for the engine files')
    parser.add_argument('--name', default=None,
                        help='engine file name without extension (default TASK_PRECISION)')
    parser.add_argument('--data', default=None,
                        help='the data set it was trained on: its hash and statistics go into '
                             'the manifest, its states into the export check')
    parser.add_argument('--json', action='store_true',
                        help='print the manifest as one JSON object on the last line')
    from qail_ros.cilrs.export import add_calibration_arguments
    add_calibration_arguments(parser)
    cilrs = parser.add_argument_group('CILRS')
    cilrs.add_argument('--kinds', default=None,
                       help='comma-separated CILRS engine kinds (default: the standard set; '
                            'qail_ros.cilrs.export.ENGINE_KINDS)')
    cilrs.add_argument('--w4a4-student', default=None,
                       help='quant.save_quantized file of the W4A4 student (else the W4A4 '
                            'engine is the PTQ-initialised model)')
    cilrs.add_argument('--resnet', type=int, default=18, choices=(18, 34),
                       help="POLICY 'cilrs': the seeded model's ResNet (18)")
    cilrs.add_argument('--height', type=int, default=256, help="POLICY 'cilrs': camera height")
    cilrs.add_argument('--width', type=int, default=900, help="POLICY 'cilrs': camera width")


def source_kind(path) -> str:
    """'cilrs', 'conv', 'openvla' or 'mlp' (physics policies and QAIL students)."""
    import json
    from pathlib import Path
    path = Path(path)
    if path.is_dir():
        cfg = path / 'config.json'
        try:
            model_type = json.loads(cfg.read_text()).get('model_type', '')
        except (OSError, ValueError, AttributeError):
            model_type = ''
        return 'openvla' if model_type == 'openvla' else 'mlp'
    if path.suffix == '.safetensors' and path.is_file():
        from safetensors import safe_open
        try:
            with safe_open(str(path), framework='np') as f:
                meta = f.metadata() or {}
        except Exception:  # noqa: BLE001 - not safetensors: the MLP loader says why
            return 'mlp'
        from qail_ros.cilrs.model import CHECKPOINT_FORMAT
        if meta.get('format') == CHECKPOINT_FORMAT:
            return 'cilrs'
        if meta.get('class') == 'ConvActionRegressor':
            return 'conv'
    return 'mlp'


def _precisions(args) -> tuple[str, ...]:
    p = {'int8': 'w8a8'}.get(args.precision or '', args.precision)
    return (p,) if p else ('fp32', 'bf16', 'w8a8')


def _export_vision_engine(model, args) -> int:
    """OpenVLA's vision towers + projector -> an onnxruntime graph or a TensorRT plan (on an
    NVIDIA GPU) + manifest, the engine vla_policy's `vision_engine` parameter takes."""
    import json

    from qail_ros.openvla.vision_engine import build_vision_engine
    path = build_vision_engine(model, args.out, backend=args.backend, precision=args.precision)
    print(f'{args.backend} vision engine {path} ({path.stat().st_size / 1e6:.1f} MB): set '
          f"vla_policy's vision_engine parameter to it")
    if args.json:
        print(json.dumps({'engine': str(path), 'manifest': str(path) + '.json',
                          'bytes': path.stat().st_size}))
    return 0


def _export_image_policy(kind: str, policy, args) -> int:
    """Conv image policy / OpenVLA towers -> OpenVINO engines (calibrated on DATASET's
    camera frames when given)."""
    from pathlib import Path

    from qail_ros.errors import ParameterError
    if kind == 'openvla' and args.backend in ('onnxruntime', 'tensorrt'):
        return _export_vision_engine(policy, args)
    if args.backend not in (None, 'openvino', 'auto'):
        raise ParameterError(f'{kind} engines are built on the openvino back end here (the '
                             'OpenVLA vision towers also on onnxruntime / tensorrt)')
    frames = held = None
    if args.calibration:
        from qail_ros.dataset.reader import load_manifest
        from qail_ros.engines.calibration import recorded_frames
        cams = [k for k in load_manifest(args.calibration)['features']
                if k.startswith('observation.images.')]
        if not cams:
            raise ParameterError(f'data set {args.calibration} has no camera images')
        rec = recorded_frames(args.calibration, frames=args.frames, holdout=args.holdout,
                              keys=cams[:1])
        frames = [s[cams[0]] for s in rec.calibration]
        held = [s[cams[0]] for s in rec.holdout]
    out = Path(args.out)
    if kind == 'conv':
        from qail_ros.policies.conv_action_regressor import ConvActionRegressor, export_openvino
        from qail_ros.engines.cache import content_hash
        paths = export_openvino(ConvActionRegressor.load(policy), out,
                                precisions=_precisions(args), frames=frames,
                                name=args.name or Path(policy).stem,
                                source_hash=content_hash(policy), holdout=held)
    else:
        from qail_ros.openvla.vision_engine import build_vision_engine
        paths = {p: build_vision_engine(policy, out, backend='openvino', precision=p,
                                        calibration_frames=frames, holdout_frames=held)
                 for p in _precisions(args)}
    from qail_ros.engines.manifest import read_manifest
    for precision, path in paths.items():
        acc = read_manifest(path)[1].details.get('accuracy')
        note = (f", max |diff| vs FP {acc['max_abs_diff']:.2e} mean {acc['mean_abs_diff']:.2e}"
                f" on {acc['frames']} held-out frames") if acc else ''
        print(f'{precision:5s} {path} ({path.stat().st_size / 1e6:.1f} MB){note}')
    return 0


def main(args) -> int:
    import json

    from qail_ros.errors import ParameterError
    from qail_ros.physics.export import describe, export_policy
    policy = args.policy
    if policy == 'fp':
        if not args.task and not args.teacher:
            raise ParameterError("policy 'fp' is the FP policy of a task: add --task (shipped) "
                                 'or --teacher DIR')
        from qail_ros.physics.models import MissingModelError, shipped_tasks, teacher_dir
        policy = teacher_dir(args.task, args.teacher) / 'fp_policy.safetensors'
        if not policy.is_file():
            raise MissingModelError(f'no FP policy at {policy}: train one with qail-ros '
                                    f'train-expert -o DIR (shipped: {shipped_tasks()})')
    elif args.task:
        raise ParameterError("--task goes with policy 'fp' only (a trained policy knows its "
                             'task)')
    if policy == 'cilrs':
        from qail_ros.cilrs.export import seeded_checkpoint
        policy = seeded_checkpoint(args.out, args.resnet, args.height, args.width)
    kind = source_kind(policy)
    if kind == 'cilrs':
        from pathlib import Path

        from qail_ros.cilrs.export import run_export
        kinds = [k for k in (args.kinds or '').split(',') if k] or None
        return run_export(Path(policy), Path(args.out), args, name=args.name,
                          kinds=kinds if args.backend is None else None,
                          w4a4_student=args.w4a4_student, log=print)
    if args.kinds or args.w4a4_student:
        raise ParameterError('--kinds and --w4a4-student go with a CILRS checkpoint')
    if kind in ('conv', 'openvla'):
        return _export_image_policy(kind, policy, args)
    if args.backend == 'openvino':
        from qail_ros.physics.export import export_openvino_policy
        built = export_openvino_policy(policy, args.out, precisions=_precisions(args),
                                       name=args.name, dataset=args.calibration or args.data,
                                       frames=args.frames, holdout=args.holdout,
                                       threads=args.threads)
        for precision, (path, manifest) in built.items():
            acc = manifest.details['accuracy']
            print(f"{precision:5s} {path}: max |engine - source| {acc['max_abs_diff']:.2e}, "
                  f"mean {acc['mean_abs_diff']:.2e} over {acc['frames']} held-out states")
        if args.json:
            print(json.dumps({p: m.to_dict() for p, (_, m) in built.items()}))
        return 0
    if args.backend not in (None, 'torch', 'torch-int8'):
        raise ParameterError(f'--backend {args.backend} for a state policy: use openvino, or '
                             'leave it out (torch / torch-int8 by the policy file)')
    engine, manifest = export_policy(policy, args.out, name=args.name, dataset=args.data)
    print(f'wrote {engine} and {engine.name}.json')
    print(describe(manifest))
    print(f'run it: qail-ros launch physics_drive engine:={engine} task:='
          f"{manifest.details.get('task') or 'TASK'}")
    if args.json:
        print(json.dumps(manifest.to_dict()))
    return 0
