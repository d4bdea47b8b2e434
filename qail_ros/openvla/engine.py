"""OpenVLA as an engine of the registry: a checkpoint directory + precision + back end.

    from qail_ros.engines import load_engine
    engine = load_engine('models/openvla-tiny', precision='int4_ort',
                         options={'unnorm_key': 'bridge_orig', 'int4_group_size': 0})
    engine.warmup(1)
    out = engine.infer({'image': rgb_uint8, 'instruction': 'open the drawer'})
    out['action'], out['bin_logits'], out['timing_ms']   # (7,), (7, 256), [pre, inference, post]

The checkpoint directory stays as it is (Hugging Face layout: config.json, safetensors shards,
tokenizer, SHA256SUMS): `checkpoint_manifest` derives the engine's manifest from it (the
architecture 'openvla' and its config facts, input and output specs, the source hash from its
SHA256SUMS, or from the files where it has none). Precisions and their back ends:
  fp32, bf16  torch                      (the whole model in that dtype)
  int4        torch                      (the Llama decoder on torch's int4 kernel)
  int4_ort    onnxruntime                (the decoder as one onnxruntime graph; precision 'int4'
                                          with backend 'onnxruntime' is the same)
Options (`OPTIONS`, all optional): unnorm_key, int4_scheme ('rtn' | 'awq'), int4_group_size
(0 = per channel), int4_weights (a backbone saved by OpenVLAPolicy.save_int4), lora_weights,
ort_graph, vision_engine (an engine of the towers + projector, itself loaded through the
registry: onnxruntime, OpenVINO or a TensorRT plan) and cache_dir: the INT4 backbone quantized
once and kept there (an EngineCache entry keyed by the checkpoint, scheme and group size), so
the next load skips the quantization (AWQ calibrates for minutes on OpenVLA-7B).
The engine holds the `OpenVLAPolicy` as `engine.policy` (tokenizer, prompt, statistics).
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np

from qail_ros.engines.base import Engine, EngineError, device_id
from qail_ros.engines.manifest import CHECKSUMS_FILE, Manifest, cache_key
from qail_ros.openvla.config import OpenVLAError

__all__ = ['ARCHITECTURE', 'PRECISION_BACKENDS', 'OPTIONS', 'OpenVLAEngine',
           'checkpoint_manifest', 'checkpoint_hash', 'resolve_precision']

ARCHITECTURE = 'openvla'
#: precision -> the back end that runs it
PRECISION_BACKENDS = {'fp32': 'torch', 'bf16': 'torch', 'int4': 'torch',
                      'int4_ort': 'onnxruntime'}
#: load options and their defaults (OpenVLAPolicy.from_pretrained's)
OPTIONS: dict[str, Any] = {'unnorm_key': None, 'int4_scheme': 'rtn', 'int4_group_size': 128,
                           'int4_weights': None, 'lora_weights': None, 'ort_graph': True,
                           'vision_engine': None, 'cache_dir': None}


def resolve_precision(precision: str | None, backend: str | None) -> tuple[str, str]:
    """(precision, back end) of a request: precision defaults to fp32, the back end to the
    precision's; 'int4' on 'onnxruntime' is 'int4_ort'."""
    precision = precision or 'fp32'
    if precision == 'int4' and backend == 'onnxruntime':
        precision = 'int4_ort'
    if precision not in PRECISION_BACKENDS:
        raise EngineError(f'OpenVLA precision {precision!r}: choose one of '
                          f'{list(PRECISION_BACKENDS)}')
    want = PRECISION_BACKENDS[precision]
    if backend not in (None, want):
        raise EngineError(f'OpenVLA precision {precision!r} runs on back end {want!r}, not '
                          f'{backend!r}')
    return precision, want


def checkpoint_hash(path: Path) -> str:
    """What the checkpoint is: sha256 of its SHA256SUMS (which names every file's sha256),
    else of config.json and the safetensors shards' own sha256s."""
    from qail_ros.engines.manifest import sha256_file
    sums = path / CHECKSUMS_FILE
    if sums.is_file():
        return hashlib.sha256(b'sums\n' + sums.read_bytes()).hexdigest()
    files = sorted(path.glob('*.safetensors')) + [path / 'config.json']
    text = '\n'.join(f'{f.name} {sha256_file(f)}' for f in files if f.is_file())
    return hashlib.sha256(text.encode()).hexdigest()


def _options(options: dict[str, Any]) -> dict[str, Any]:
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise EngineError(f'OpenVLA options {unknown} are unknown; known: {sorted(OPTIONS)}')
    out = dict(OPTIONS)
    out.update({k: v for k, v in options.items() if v is not None})
    for key in ('int4_weights', 'lora_weights', 'vision_engine', 'cache_dir'):
        out[key] = str(out[key]) if out[key] else None
    out['int4_group_size'] = int(out['int4_group_size'])
    out['ort_graph'] = bool(out['ort_graph'])
    return out


def checkpoint_manifest(path: Path | None, *, precision: str | None = None,
                        backend: str | None = None, config: dict[str, Any] | None = None,
                        options: dict[str, Any] | None = None, device: str = 'cpu') -> Manifest:
    """The manifest of an OpenVLA checkpoint directory at `precision` on `backend` (see the
    module docstring); EngineError naming the problem (no config.json, an unknown
    unnorm_key ...) before any weight is read."""
    from qail_ros.openvla.action_tokenizer import select_stats
    from qail_ros.openvla.config import read_config
    if path is None:
        raise EngineError('OpenVLA loads from a checkpoint directory: give its path')
    precision, backend = resolve_precision(precision, backend)
    opts = _options(options or {})
    try:
        cfg = read_config(path)
        key, stats = select_stats(cfg.norm_stats, opts['unnorm_key'])
    except OpenVLAError as exc:
        raise EngineError(str(exc)) from None
    opts['unnorm_key'] = key
    dim = len(stats['q01'])
    spec = cfg.vit_specs[0]
    source = checkpoint_hash(path)
    version, dev = OpenVLAEngine.backend_version(), device_id(device)
    return Manifest(
        engine_file=path.name, engine_sha256=source,
        architecture={'name': ARCHITECTURE, 'config': {
            'image_size': spec.image_size, 'towers': len(cfg.vit_specs),
            'patches': spec.num_patches, 'action_dim': dim, 'n_action_bins': cfg.n_action_bins,
            'vocab_size': cfg.vocab_size, 'unnorm_key': key}},
        precision=precision, backend=backend, backend_version=version, device=dev,
        inputs={'image': {'shape': [None, None, 3], 'dtype': 'uint8',
                          'example_shape': [spec.image_size, spec.image_size, 3]},
                'instruction': {'shape': [], 'dtype': 'str'}},
        outputs={'action': {'shape': [dim], 'dtype': 'float64'},
                 'normalized': {'shape': [dim], 'dtype': 'float64'},
                 'tokens': {'shape': [dim], 'dtype': 'int64'},
                 'bin_logits': {'shape': [dim, cfg.n_action_bins], 'dtype': 'float32'},
                 'timing_ms': {'shape': [3], 'dtype': 'float64'}},
        source_hash=source,
        normalisation={'image': "uint8 RGB, any size: each tower's resize (bicubic, "
                                'antialiased) and mean / std, channels stacked',
                       'instruction': 'the OpenVLA prompt template, tokenised with <BOS>',
                       'action': f'bins -> [-1, 1] -> {key} statistics (q01, q99)',
                       'timing_ms': 'preprocess, inference, postprocess'},
        cache_key=cache_key(source, backend, version, dev, precision),
        details={'derived_from': 'checkpoint directory', 'options': opts})


def cached_int4_backbone(path: Path, manifest: Manifest, opts: dict[str, Any],
                         threads: int = 1) -> Path:
    """The INT4 backbone of the checkpoint (scheme, group size) from `cache_dir`, quantized
    and saved there first when it is missing or stale (EngineCache)."""
    from qail_ros.engines.cache import EngineCache
    scheme, group = opts['int4_scheme'], opts['int4_group_size']

    def build(out: Path) -> dict[str, Any]:
        from qail_ros.openvla.policy import OpenVLAPolicy
        policy = OpenVLAPolicy.from_pretrained(path, unnorm_key=opts['unnorm_key'])
        policy.quantize_int4(scheme, group)
        policy.save_int4(out)
        return {'architecture': {'name': 'openvla-int4-backbone',
                                 'config': {'scheme': scheme, 'group_size': group}},
                'inputs': {}, 'outputs': {},
                'details': {'source': str(path), **policy.int4_details}}
    entry, _ = EngineCache(opts['cache_dir']).get_or_build(
        path, f'{path.name}_int4_{scheme}_g{group}', backend='torch',
        precision=f'int4-{scheme}-g{group}', build_fn=build, suffix='.safetensors',
        source_hash=manifest.source_hash)
    return entry


class OpenVLAEngine(Engine):
    """OpenVLAPolicy behind the engine interface: infer({'image', 'instruction'}) -> the
    action, its bins' logits and the timing of one prediction."""

    BACKEND = ''      # the manifest's: torch or onnxruntime
    PRECISIONS = tuple(PRECISION_BACKENDS)

    @classmethod
    def backend_version(cls) -> str:
        import torch
        return str(torch.__version__)

    def _load(self) -> None:
        import torch

        from qail_ros.openvla.policy import INT4_BACKENDS, OpenVLAPolicy
        opts = _options(self.manifest.details.get('options', {}))
        torch.set_num_threads(self.threads)
        try:
            int4_weights = opts['int4_weights']
            if self.precision in INT4_BACKENDS and not int4_weights and opts['cache_dir']:
                int4_weights = cached_int4_backbone(self.file, self.manifest, opts,
                                                    self.threads)
            self.policy = OpenVLAPolicy.from_pretrained(
                self.file, precision=self.precision, unnorm_key=opts['unnorm_key'],
                int4_scheme=opts['int4_scheme'], int4_group_size=opts['int4_group_size'],
                int4_weights=int4_weights, ort_threads=self.threads,
                lora_weights=opts['lora_weights'], ort_graph=opts['ort_graph'],
                ort_device=self.device, vision_engine=opts['vision_engine'])
        except OpenVLAError as exc:
            raise EngineError(str(exc)) from None

    def _infer(self, inputs: dict[str, Any]) -> dict[str, np.ndarray]:
        r = self.policy.predict(inputs['image'], inputs['instruction'])
        t = r.timing_ms
        return {'action': r.action, 'normalized': r.normalized, 'tokens': r.tokens,
                'bin_logits': r.bin_logits,
                'timing_ms': np.array([t['preprocess_ms'], t['inference_ms'],
                                       t['postprocess_ms']], np.float64)}

    def warmup(self, runs: int = 1, instruction: str = '') -> float:
        """`runs` predictions on a black frame at the towers' size (first calls allocate)."""
        return float(self.policy.warmup(runs, instruction))

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), 'model': self.policy.describe()}
