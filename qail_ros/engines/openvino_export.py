"""OpenVINO engines (fp32 / bf16 / w8a8) of any float torch module or ONNX graph, via the cache.

    paths = build_openvino_engines(onnx_or_module, out_dir, 'mlp_policy', fields=fields,
                                   source_hash=content_hash(src), input_names=['state'],
                                   output_names=['action'], calibration=feeds)
    # {'fp32': .../mlp_policy_fp32_openvino.ovz, 'bf16': ..., 'w8a8': ...}

Used by the MLP state policies (qail_ros.physics.export), the conv image policy
(qail_ros.policies.conv_action_regressor) and the OpenVLA vision towers
(qail_ros.openvla.vision_engine); CILRS has its own kinds in qail_ros.cilrs.export. `fields`
are the manifest fields the builder knows (architecture, inputs, outputs, normalisation,
details); w8a8 is NNCF post-training quantization on the `calibration` feeds (recorded data
for a deployed engine), and its cache key holds their hash.
"""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from qail_ros.engines.base import EngineError

__all__ = ['build_openvino_engines', 'export_module_onnx']


def export_module_onnx(module, example: dict[str, np.ndarray], output_names: Sequence[str],
                       path: str | Path, opset: int = 17) -> Path:
    """A float torch module (batch-1 static shapes) -> ONNX with the TorchScript exporter."""
    import warnings

    import torch
    args = tuple(torch.from_numpy(np.ascontiguousarray(v, np.float32)) for v in example.values())
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter('ignore', DeprecationWarning)
        torch.onnx.export(module.eval().float(), args, str(path), dynamo=False,
                          input_names=list(example), output_names=list(output_names),
                          opset_version=opset, do_constant_folding=True)
    _no_float64(Path(path))
    return Path(path)


def _no_float64(path: Path) -> None:
    """Cast-to-double nodes and double constants (the TorchScript exporter's torch.linspace
    and what constant folding made of them) become float32: OpenVINO's CPU plugin does not
    compute in f64."""
    import onnx
    from onnx import TensorProto, numpy_helper
    model = onnx.load(str(path))
    changed = False
    for node in model.graph.node:
        for attr in node.attribute:
            if node.op_type == 'Cast' and attr.name == 'to' and attr.i == TensorProto.DOUBLE:
                attr.i = TensorProto.FLOAT
                changed = True
            if node.op_type == 'Constant' and attr.name == 'value' and (
                    attr.t.data_type == TensorProto.DOUBLE):
                attr.t.CopyFrom(numpy_helper.from_array(
                    numpy_helper.to_array(attr.t).astype(np.float32), attr.t.name))
                changed = True
    for i, init in enumerate(model.graph.initializer):
        if init.data_type == TensorProto.DOUBLE:
            model.graph.initializer[i].CopyFrom(numpy_helper.from_array(
                numpy_helper.to_array(init).astype(np.float32), init.name))
            changed = True
    if changed:
        onnx.save(model, str(path))


def build_openvino_engines(graph, out_dir: str | Path, name: str, *, fields: dict[str, Any],
                           source_hash: str, example: dict[str, np.ndarray] | None = None,
                           output_names: Sequence[str] = (),
                           precisions: Sequence[str] = ('fp32', 'bf16', 'w8a8'),
                           calibration: Sequence[dict[str, np.ndarray]] = (),
                           nncf_options: dict[str, Any] | None = None,
                           holdout: Sequence[dict[str, np.ndarray]] = ()) -> dict[str, Path]:
    """Build (or reuse) OpenVINO engines of `graph` (an ONNX path, or a torch module exported
    with `example` inputs and `output_names`) in `out_dir` as `{name}_{precision}_openvino.ovz`.
    With `holdout` feeds, each engine's max / mean abs difference to the float graph (the
    torch module, or the ONNX graph on onnxruntime) goes into its manifest
    (`details.accuracy`).
    """
    import json

    from qail_ros.engines import openvino_engine as ov
    from qail_ros.engines.cache import EngineCache
    from qail_ros.engines.calibration import feeds_hash
    bad = [p for p in precisions if p not in ov.PRECISIONS + ('w8a8',)]
    if bad:
        raise EngineError(f'OpenVINO precisions {bad}: choose from fp32, bf16, w8a8')
    if 'w8a8' in precisions and not calibration:
        raise EngineError('the OpenVINO w8a8 engine needs calibration inputs: give recorded '
                          'frames (--calibration DATASET)')
    cache = EngineCache(out_dir)
    paths: dict[str, Path] = {}
    with tempfile.TemporaryDirectory(prefix='qail-ov-export-') as tmp:
        onnx_path = Path(tmp) / 'model.onnx'

        def onnx() -> Path:
            if isinstance(graph, (str, Path)):
                return Path(graph)
            if not onnx_path.exists():
                if example is None:
                    raise EngineError('export_module_onnx needs example inputs')
                export_module_onnx(graph, example, output_names, onnx_path)
            return onnx_path

        for precision in precisions:
            key = source_hash
            if precision == 'w8a8':
                key += f'+calib{feeds_hash(calibration)}'
                if nncf_options:
                    key += '+nncf' + json.dumps(nncf_options, sort_keys=True)

            def build(p, _precision=precision):
                model = ov.convert_onnx(onnx())
                details: dict[str, Any] = {'ir': 'OpenVINO IR (model.xml + model.bin, one zip)'}
                if _precision == 'w8a8':
                    import nncf
                    model = ov.nncf_int8(model, calibration, **(nncf_options or {}))
                    details.update({'quantizer': f'NNCF {nncf.__version__} post-training '
                                                 'quantization',
                                    'calibration_frames': len(calibration),
                                    'nncf_options': nncf_options or 'NNCF defaults'})
                elif _precision == 'bf16':
                    details['compute'] = ('bfloat16 (INFERENCE_PRECISION_HINT bf16) where the '
                                          'CPU has it, else float32')
                details.update(ov.ir_details(model))
                ov.save_ir(model, p)
                return {**fields, 'details': {**fields.get('details', {}), **details}}

            paths[precision], _ = cache.get_or_build(
                None, f'{name}_{precision}_openvino', backend='openvino', precision=precision,
                build_fn=build, suffix=ov.SUFFIX, source_hash=key)
        if holdout:
            _record_accuracy(paths, graph, onnx, holdout, output_names or list(
                fields['outputs']))
    return paths


def _record_accuracy(paths: dict[str, Path], graph, onnx, holdout, output_names) -> None:
    from qail_ros.engines.calibration import accuracy
    from qail_ros.engines.manifest import read_manifest, write_manifest
    from qail_ros.engines.registry import load_engine
    if isinstance(graph, (str, Path)):
        import onnxruntime as ort
        sess = ort.InferenceSession(str(onnx()), providers=['CPUExecutionProvider'])
        reference = [dict(zip(output_names, sess.run(list(output_names), dict(f))))
                     for f in holdout]
        what = 'the float ONNX graph on onnxruntime'
    else:
        import torch
        with torch.no_grad():
            reference = []
            for f in holdout:
                outs = graph(*(torch.from_numpy(np.asarray(v, np.float32)) for v in f.values()))
                outs = outs if isinstance(outs, (tuple, list)) else (outs,)
                reference.append({n: o.numpy() for n, o in zip(output_names, outs)})
        what = 'the float torch module'
    for path in paths.values():
        acc = accuracy(load_engine(path), holdout, reference)
        engine_path, manifest = read_manifest(path)
        manifest.details['accuracy'] = {**acc, 'reference': what}
        write_manifest(manifest, engine_path.parent)
