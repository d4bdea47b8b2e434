"""OpenVLAPolicy: an RGB frame + an instruction -> a 7-DoF action, as OpenVLA's predict_action.

    policy = OpenVLAPolicy.from_pretrained('models/openvla-tiny', precision='fp32')
    result = policy.predict(frame_rgb_uint8, 'pick up the red block')
    result.action        # un-normalised (dataset units), shape (action_dim,)
    result.bin_logits    # (action_dim, n_bins) logits of the action tokens, bin order

Steps: the frame is resized to each tower's input (bicubic, antialiased: the Prismatic image
processor's 'resize-naive' strategy, done in torch rather than PIL) and normalised with the
tower's mean/std (ImageNet for DINOv2, 0.5/0.5 for SigLIP); the channels of the two towers are
stacked. The prompt 'In: What action should the robot take to {instruction}?\\nOut:' is
tokenised with <BOS>, and the empty piece '\u2581' (29871 for Llama) appended unless it ends
the prompt already. Greedy decode of action_dim tokens (whole vocabulary argmax), then the
action tokenizer and un-normalisation with `unnorm_key`'s statistics.

Precisions: 'fp32'; 'bf16' (everything bfloat16); 'int4': the Llama decoder's linear layers
(lm_head excluded) quantized by qail_ros.quant (group-wise INT4 weight-only, RTN or AWQ) and
run on torch's CPU int4 kernel (bf16 compute), vision towers and projector in fp32;
'int4_ort': the same INT4 codes with the whole Llama decoder (layers, final norm, lm_head) as
ONE onnxruntime graph (qail_ros.quant.ort_llama.OrtLlamaDecoder: MatMulNBits at
accuracy_level 4 = int8 activations per block, AWQ input scales inside, GroupQueryAttention
with rotary and an in-place KV cache), one graph run for the prefill and one per decode step;
towers, projector and token embeddings stay torch fp32, lm_head fp32 inside the graph. The
fastest CPU path: decode is memory-bound and MatMulNBits streams the 4-bit weights close to
the bandwidth floor (docs/results/decode.md). `ort_graph=False` puts each linear on its own
session inside transformers' forward instead (qail_ros.quant.ort_int4; slower per token).
Needs onnxruntime and onnx (imported only for this precision).
"""
from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from qail_ros.openvla.action_tokenizer import ActionTokenizer, select_stats, unnormalize
from qail_ros.openvla.config import (PROMPT_TEMPLATE, OpenVLAConfig, OpenVLAError, read_config,
                                     tower_inputs)

__all__ = ['OpenVLAPolicy', 'ActionResult', 'PRECISIONS', 'INT4_SCHEMES', 'INT4_BACKENDS',
           'load_tokenizer', 'auto_group_size']

PRECISIONS = ('fp32', 'bf16', 'int4', 'int4_ort')
INT4_SCHEMES = ('rtn', 'awq')
#: INT4 precision -> the back end convert_int4 puts the quantized backbone on
INT4_BACKENDS = {'int4': 'torch', 'int4_ort': 'ort'}
EMPTY_PIECE = '\u2581'


@dataclasses.dataclass
class ActionResult:
    action: np.ndarray          # un-normalised, float64 (action_dim,)
    normalized: np.ndarray      # bin centres in [-1, 1] (action_dim,)
    tokens: np.ndarray          # generated token ids (action_dim,)
    bin_logits: np.ndarray      # float32 (action_dim, n_bins): bin k = token vocab - 1 - k
    timing_ms: dict[str, float]


def load_tokenizer(path: Path):
    """The checkpoint's own tokenizer, offline and without remote code."""
    os.environ.setdefault('HF_HUB_OFFLINE', '1')
    os.environ.setdefault('TRANSFORMERS_OFFLINE', '1')
    from transformers import AutoTokenizer, PreTrainedTokenizerFast
    try:
        if (path / 'tokenizer.json').is_file():   # the fast tokenizer, whatever class it names
            return PreTrainedTokenizerFast.from_pretrained(str(path), local_files_only=True)
        return AutoTokenizer.from_pretrained(str(path), local_files_only=True,
                                             trust_remote_code=False)
    except Exception as exc:  # noqa: BLE001 - transformers raises many kinds here
        raise OpenVLAError(f'{path}: no usable tokenizer ({type(exc).__name__}: {exc}). Fix: '
                           'the checkpoint directory needs tokenizer.json (and '
                           'tokenizer_config.json) from the same checkpoint') from None


def auto_group_size(in_features: list[int], group_size: int) -> int:
    """The largest power-of-two fraction of `group_size` dividing every layer's input size."""
    g = int(group_size)
    while g > 1 and any(k % g for k in in_features):
        g //= 2
    return g


class OpenVLAPolicy:
    """A loaded OpenVLA model, its tokenizer, action tokenizer and statistics."""

    def __init__(self, model, tokenizer, config: OpenVLAConfig, *, unnorm_key: str | None = None,
                 precision: str = 'fp32', path: Path | None = None):
        import torch
        self.model, self.tokenizer, self.config = model, tokenizer, config
        self.path = path
        self.unnorm_key, self.stats = select_stats(config.norm_stats, unnorm_key)
        self.action_dim = len(self.stats['q01'])
        self.action_tokenizer = ActionTokenizer(config.vocab_size, config.n_action_bins)
        self.precision = precision
        self.dtype = torch.bfloat16 if precision == 'bf16' else torch.float32
        # 'none' | 'fake' (quantize_ done) | 'kernel' (torch int4) | 'ort' (MatMulNBits)
        self.int4_state = 'none'
        self.int4_details: dict[str, Any] = {}
        empty = tokenizer.convert_tokens_to_ids(EMPTY_PIECE)
        self.empty_token_id = None if empty in (None, tokenizer.unk_token_id) else int(empty)
        self._bin_ids = torch.as_tensor(self.action_tokenizer.bin_token_ids())
        self._prompt_cache: tuple[str, Any] | None = None

    # -- loading ----------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, path: str | Path, *, precision: str = 'fp32',
                        unnorm_key: str | None = None, int4_scheme: str = 'rtn',
                        int4_group_size: int = 128, int4_weights: str | Path | None = None,
                        ort_threads: int | None = None,
                        lora_weights: str | Path | None = None,
                        ort_graph: bool = True, ort_device: str = 'cpu',
                        vision_engine: str | Path | None = None) -> OpenVLAPolicy:
        """Load a checkpoint directory; INT4 precisions quantize the backbone (or load
        `int4_weights`) and convert it. ort_threads: onnxruntime threads for 'int4_ort'
        (default: torch's thread count); ort_graph: the whole decoder as one onnxruntime graph
        (default) or one session per linear (convert_int4's `graph`). lora_weights: QLoRA
        adapters trained over that INT4 backbone (`qail-ros train-vla`), run in float32 beside
        the INT4 kernels (torch's for 'int4', inside the onnxruntime graph for 'int4_ort').
        ort_device: 'cpu' or 'cuda' (onnxruntime-gpu) for the int4_ort graph. vision_engine:
        an engine of the towers + projector (qail_ros.openvla.vision_engine: onnxruntime, or a
        TensorRT plan on a GPU) run instead of the torch towers, which are then freed."""
        import torch
        from qail_ros.openvla.checkpoint import load_model
        if precision not in PRECISIONS:
            raise OpenVLAError(f'precision {precision!r}: choose one of {list(PRECISIONS)}')
        if precision == 'int4_ort':
            _require_ort()                                # before the (slow) weights
        elif ort_device != 'cpu':
            raise OpenVLAError(f"ort_device {ort_device!r} is for precision 'int4_ort' (the "
                               f'onnxruntime decoder graph), not {precision!r}')
        if lora_weights:
            if precision not in INT4_BACKENDS:
                raise OpenVLAError(f'lora_weights need precision int4 or int4_ort, not '
                                   f'{precision!r}: QLoRA adapters sit on the INT4 backbone')
            if precision == 'int4_ort' and not ort_graph:
                raise OpenVLAError('lora_weights with int4_ort need the graph engine '
                                   '(ort_graph=True): the per-layer sessions fuse the layers '
                                   'the adapters attach to')
            if not int4_weights:
                raise OpenVLAError('lora_weights need the int4_weights they were trained '
                                   'over (train-vla writes both: int4_backbone.safetensors '
                                   'and adapters.safetensors)')
            if not Path(lora_weights).is_file():
                raise OpenVLAError(f'lora_weights {str(lora_weights)!r} do not exist')
        path = Path(path)
        config = read_config(path)
        select_stats(config.norm_stats, unnorm_key)      # a bad key fails before the weights
        model = load_model(path, dtype=torch.bfloat16 if precision == 'bf16' else
                           torch.float32, config=config)
        if vision_engine:
            from qail_ros.openvla.vision_engine import load_vision_engine
            if precision == 'bf16':
                raise OpenVLAError('vision_engine runs with precision fp32 / int4 / int4_ort '
                                   '(the engine outputs float32 patches), not bf16')
            model.use_vision_engine(load_vision_engine(
                vision_engine, config, threads=ort_threads or torch.get_num_threads()))
        policy = cls(model, load_tokenizer(path), config, unnorm_key=unnorm_key,
                     precision='fp32' if precision in INT4_BACKENDS else precision, path=path)
        if precision in INT4_BACKENDS:
            if int4_weights:
                policy.load_int4(int4_weights)
            else:
                policy.quantize_int4(int4_scheme, int4_group_size)
            if lora_weights:
                policy.load_lora(lora_weights)
            policy.convert_int4(INT4_BACKENDS[precision], threads=ort_threads, graph=ort_graph,
                                device=ort_device)
        return policy

    # -- INT4 weight-only backbone ----------------------------------------------------------
    def _int4_config(self, scheme: str, group_size: int):
        from torch import nn
        from qail_ros import quant
        if scheme not in INT4_SCHEMES:
            raise OpenVLAError(f'int4 scheme {scheme!r}: choose one of {list(INT4_SCHEMES)}')
        if group_size < 0:
            raise OpenVLAError(f'int4 group size {group_size}: give 0 (per channel) or a '
                               'positive group size such as 128')
        cls = quant.Int4WeightOnlyAWQ if scheme == 'awq' else quant.WeightOnlyRTN
        kwargs = {} if scheme == 'awq' else {'bits': 4}
        if group_size == 0:
            return cls(granularity='per_channel', exclude=['lm_head'], **kwargs), 0
        ks = [m.in_features for n, m in self.model.language_model.named_modules()
              if isinstance(m, nn.Linear) and n != 'lm_head']
        g = auto_group_size(ks, group_size)
        return cls(granularity='group', group_size=g, exclude=['lm_head'], **kwargs), g

    def quantize_int4(self, scheme: str = 'rtn', group_size: int = 128,
                      calibration_frames: list[np.ndarray] | None = None,
                      instruction: str = 'pick up the block') -> None:
        """INT4 weight-only fake quantization of the Llama decoder (lm_head stays float),
        group-wise, or per channel when `group_size` is 0 (the paper's channel-wise INT4, what
        train-vla writes, and the faster MatMulNBits layout: blocks of 256). AWQ calibrates on
        prefill inputs of `calibration_frames` (default: two synthetic frames). Call
        convert_int4() after an optional save_int4()."""
        import torch
        from qail_ros import quant
        if self.int4_state != 'none':
            raise OpenVLAError('the backbone is already quantized')
        cfg, g = self._int4_config(scheme, group_size)
        calibration = None
        if scheme == 'awq':
            rng = np.random.default_rng(0)
            frames = calibration_frames or [np.full((224, 224, 3), 127, np.uint8),
                                            rng.integers(0, 256, (224, 224, 3), np.uint8)]
            with torch.no_grad():
                embeds = [self.model.multimodal_embeddings(self.pixel_values(f),
                                                           self.prompt_ids(instruction))
                          for f in frames]
            calibration = [{'inputs_embeds': e} for e in embeds]
        quant.quantize_(self.model.language_model, cfg, calibration=calibration)
        self.int4_state = 'fake'
        self.int4_details = {'scheme': scheme, 'group_size': g}
        self.precision = 'int4'

    def save_int4(self, path: str | Path) -> Path:
        """The quantized backbone (packed int4 codes + scales) as one safetensors file."""
        from qail_ros import quant
        if self.int4_state != 'fake':
            raise OpenVLAError('save_int4 needs quantize_int4() first and must come before '
                               'convert_int4()')
        return quant.save_quantized(self.model.language_model, path)

    def load_int4(self, path: str | Path) -> None:
        """Apply a backbone saved by save_int4 to this (float) model: identical outputs."""
        from qail_ros import quant
        path = Path(path)
        if not path.is_file():
            raise OpenVLAError(f'int4 weights {str(path)!r} do not exist; make them with '
                               'OpenVLAPolicy.save_int4 (docs/openvla.md)')
        from qail_ros.quant.serialization import read_header
        quant.load_quantized(self.model.language_model, path)
        cfg = read_header(path).get('config', {})
        self.int4_state = 'fake'
        self.int4_details = {'scheme': cfg.get('scheme', 'file'),
                             'group_size': cfg.get('group_size'), 'file': str(path)}
        self.precision = 'int4'

    def load_lora(self, path: str | Path) -> None:
        """Wrap the fake-quantized backbone's linear layers in the saved QLoRA adapters."""
        from safetensors import safe_open
        from qail_ros.quant.lora import add_lora, load_lora
        if self.int4_state != 'fake':
            raise OpenVLAError('load_lora needs the INT4 backbone first (load_int4)')
        with safe_open(str(path), 'pt') as f:
            meta = f.metadata() or {}
        try:
            rank, alpha = int(meta['rank']), float(meta['alpha'])
        except (KeyError, ValueError):
            raise OpenVLAError(f'{path}: not a LoRA adapter file (no rank / alpha metadata); '
                               'make it with qail-ros train-vla') from None
        add_lora(self.model.language_model, rank=rank, alpha=alpha)
        try:
            load_lora(self.model.language_model, path)
        except ValueError as exc:
            raise OpenVLAError(str(exc)) from None
        self.int4_details['lora'] = {'file': str(path), 'rank': rank, 'alpha': alpha}

    def convert_int4(self, backend: str = 'torch', *, threads: int | None = None,
                     accuracy_level: int = 4, graph: bool = True, device: str = 'cpu') -> None:
        """Swap the fake-quantized layers for real INT4 layers, same codes: backend 'torch'
        (torch's CPU int4 kernel, bf16 compute; precision 'int4') or 'ort' (onnxruntime
        MatMulNBits, `threads` intra-op threads, default torch's count; accuracy_level 4 = int8
        activations, 1 = float32; precision 'int4_ort'). With 'ort', graph=True (default) runs
        the whole decoder, final norm and lm_head as one onnxruntime graph with an in-place KV
        cache (qail_ros.quant.ort_llama; the torch decoder layers are freed); graph=False puts
        each linear layer on its own session inside transformers' forward (slower per token;
        kept for models the graph does not take). device: 'cpu', or 'cuda' for the graph on
        onnxruntime-gpu (float16 attention and KV cache)."""
        import torch
        from qail_ros import quant
        if self.int4_state != 'fake':
            raise OpenVLAError('convert_int4 needs quantize_int4() or load_int4() first')
        if backend == 'torch':
            quant.deploy(self.model.language_model, 'integer')
            self.int4_state = 'kernel'
            self.int4_details['backend'] = 'torch'
            return
        if backend != 'ort':
            raise OpenVLAError(f"int4 backend {backend!r}: choose 'torch' or 'ort'")
        if device != 'cpu' and not graph:
            raise OpenVLAError(f"device {device!r} needs the graph engine (graph=True)")
        if 'lora' in self.int4_details and not graph:
            raise OpenVLAError('QLoRA adapters on onnxruntime need graph=True: the per-layer '
                               'sessions fuse the layers the adapters attach to')
        _require_ort()
        n = int(threads) if threads else torch.get_num_threads()
        from qail_ros.quant.ort_int4 import OrtInt4Error
        try:
            deployed = quant.deploy(self.model.language_model, 'ort' if graph else 'ort-layers',
                                    threads=n, accuracy_level=accuracy_level, device=device,
                                    capacity=self.config.vit_specs[0].num_patches + 64)
        except OrtInt4Error as exc:
            raise OpenVLAError(str(exc)) from None
        if graph:      # the decoder graph; deploy freed the torch layers it now owns
            self.model.decoder = deployed
        self.int4_state = 'ort'
        self.precision = 'int4_ort'
        self.int4_details.update(backend='onnxruntime', accuracy_level=accuracy_level,
                                 threads=n, engine='graph' if graph else 'layers')
        if device != 'cpu':
            self.int4_details['device'] = device

    # -- inference --------------------------------------------------------------------------
    def prompt(self, instruction: str) -> str:
        return PROMPT_TEMPLATE.format(instruction=instruction.strip())

    def prompt_ids(self, instruction: str):
        import torch
        if self._prompt_cache is not None and self._prompt_cache[0] == instruction:
            return self._prompt_cache[1]
        ids = list(self.tokenizer(self.prompt(instruction))['input_ids'])
        if self.empty_token_id is not None and ids[-1] != self.empty_token_id:
            ids.append(self.empty_token_id)
        t = torch.tensor([ids], dtype=torch.long)
        self._prompt_cache = (instruction, t)
        return t

    def pixel_values(self, frame: np.ndarray):
        """uint8 (H, W, 3) RGB -> (1, 3 x towers, S, S) float, each tower's normalisation."""
        import torch
        if frame.ndim != 3 or frame.shape[2] != 3:
            raise OpenVLAError(f'expected an (H, W, 3) RGB frame, got shape {frame.shape}')
        arr = np.ascontiguousarray(frame)
        if not arr.flags.writeable:      # e.g. a view of a received message's bytes
            arr = arr.copy()
        x = torch.from_numpy(arr).permute(2, 0, 1)[None].float() / 255
        return tower_inputs(x, self.config.vit_specs).to(self.dtype)

    def predict(self, frame: np.ndarray, instruction: str) -> ActionResult:
        t0 = time.perf_counter()
        pixels = self.pixel_values(frame)
        ids = self.prompt_ids(instruction)
        t1 = time.perf_counter()
        tokens, logits = self.model.generate_actions(pixels, ids, self.action_dim)
        tokens, logits = tokens[0], logits[0]
        t2 = time.perf_counter()
        tokens_np = tokens.numpy()
        normalized = self.action_tokenizer.decode(tokens_np)
        action = unnormalize(normalized, self.stats)
        bin_logits = logits[:, self._bin_ids].float().numpy()
        t3 = time.perf_counter()
        return ActionResult(action=action, normalized=normalized, tokens=tokens_np,
                            bin_logits=bin_logits,
                            timing_ms={'preprocess_ms': (t1 - t0) * 1e3,
                                       'inference_ms': (t2 - t1) * 1e3,
                                       'postprocess_ms': (t3 - t2) * 1e3})

    def warmup(self, runs: int = 1, instruction: str = '') -> float:
        """Run `runs` predictions on a black frame (first calls allocate); returns seconds."""
        side = self.config.vit_specs[0].image_size
        start = time.perf_counter()
        for _ in range(max(int(runs), 1)):
            self.predict(np.zeros((side, side, 3), np.uint8), instruction)
        return time.perf_counter() - start

    def num_parameters(self) -> int:
        """Weights of the model however they are held: torch parameters, the integer
        kernels' packed weights (counted as in x out each) and the onnxruntime decoder's."""
        from qail_ros.quant.integer import WeightOnlyLinear
        n = sum(p.numel() for p in self.model.parameters())
        n += sum(m.in_features * m.out_features for m in self.model.modules()
                 if isinstance(m, WeightOnlyLinear))
        dec = self.model.decoder
        return n + (dec.parameters if dec is not None else 0)

    def describe(self) -> dict[str, Any]:
        return {'architecture': 'openvla', 'path': str(self.path), 'precision': self.precision,
                'int4': self.int4_details if self.precision in INT4_BACKENDS else None,
                'int4_state': self.int4_state, 'unnorm_key': self.unnorm_key,
                'vision_engine': (None if self.model.vision_engine is None
                                  else self.model.vision_engine.describe()),
                'action_dim': self.action_dim, 'parameters': self.num_parameters(),
                'vision': [s.to_dict() for s in self.config.vit_specs],
                'llm': {k: self.config.text_config.get(k) for k in
                        ('hidden_size', 'num_hidden_layers', 'vocab_size')}}


def _require_ort() -> None:
    """Raise a clear error when onnxruntime / onnx (precision 'int4_ort') are missing."""
    from qail_ros.quant.ort_int4 import ort_available
    if not ort_available():
        raise OpenVLAError("precision 'int4_ort' needs onnxruntime and onnx, which are not "
                           "importable: pip install onnxruntime onnx, or use precision 'int4' "
                           "(torch's int4 kernel)")
