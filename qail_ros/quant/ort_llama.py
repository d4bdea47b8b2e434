"""A whole INT4 Llama decoder as ONE onnxruntime graph, with its KV cache kept in place.

    decoder = OrtLlamaDecoder(llama_for_causal_lm, threads=1, accuracy_level=4)
    logits = decoder.step(inputs_embeds)     # (1, S, hidden) -> last position's logits (1, V)
    logits = decoder.step(decoder.embed(token_id))   # next token: the cache grows by one
    decoder.reset()                                   # a new sequence

Why: with one onnxruntime session per linear (qail_ros.quant.ort_int4) the 4-bit kernels run
close to the bandwidth floor, but every decode step still pays transformers' Python forward,
torch's attention over the KV cache, norms, rotary and ~50 session calls: about a third of the
step at the ~1 B layout (docs/results/decode.md). Here the decoder layers, the final norm and
lm_head are one graph, so a decode step is one `run_with_iobinding` call:

    per layer:  SimplifiedLayerNormalization -> MatMulNBits q|k|v (fused) ->
                GroupQueryAttention (com.microsoft: rotary inside, causal, KV cache read and
                appended in place) -> MatMulNBits o_proj -> + residual ->
                SimplifiedLayerNormalization -> MatMulNBits gate|up -> SiLU * up ->
                MatMulNBits down_proj -> + residual
    then:       final norm on the last position only -> lm_head (MatMulNBits when it is INT4,
                else a float32 MatMul)

The KV cache: one float32 OrtValue per layer for K and one for V, shaped
(1, kv_heads, capacity, head_dim), bound both as the layer's past and its present output:
GroupQueryAttention then writes the new positions into the same buffer (its
past_present_share_buffer mode) instead of concatenating. The capacity grows (by copying,
rounded up to 64 positions) only when a sequence gets longer than any before it.

The weights are the same codes as the qail_ros layers (ort_int4's extraction: RTN or AWQ,
group-wise or per channel, AWQ input scales as a Div in front of their MatMulNBits); layers of
5..8 bits (e.g. WeightOnlyRTN(bits=8)) run on MatMulNBits' 8-bit storage, so the same graph
is also an INT8 weight-only decoder. Rotary
cos/sin come from the model's own rotary module (so any static RoPE scaling it applies is
kept); a model whose rope depends on the sequence (dynamic scaling) is refused. QLoRA adapters
(qail_ros.quant.lora.LoRALinear around a layer) become two float32 MatMuls added to their
projection's output. Batch 1 (a robot's policy), float32 activations; accuracy_level 4
quantizes activations per block to int8 (outputs within ~1e-3 of the output scale of the
float reference), 1 computes in float32.

Prefill (`prefill='int8'`, the CPU default when every linear is per channel): the prompt (OpenVLA:
256 image patches + ~20 tokens, ~93 % of an action at 1 thread) runs through a SECOND graph
of the same layers whose linears are int8 GEMMs: the same codes stored as int8 (exact: a
per-channel 4-bit code is an int8 value times the channel's scale), activations quantized per
row (per token) to int8 symmetric (scale = max |x| / 127, stored as uint8 with zero point
128, the u8 x s8 form the CPU's VNNI / AVX2 kernels take), `MatMulInteger` -> int32 -> times
row scale x channel scale. MLAS runs that GEMM at ~1.6x the MatMulNBits 4-bit rate at
prefill sizes (measured on a 2-core EPYC, M 276, K 2048, N 5504, one thread: 17 vs 28 ms of
CPU time). down_proj stays on MatMulNBits in that graph (INT8_PREFILL_SKIP: its input
silu(gate) * up is heavy-tailed, and one int8 scale per token cost accuracy: at the ~1 B
layout the prefill logits were 8.5 % of their scale off the float model with it, 5.3 % without
it, 5.4 % for the all-MatMulNBits graph). Both graphs read and write the same KV-cache
buffers; decode steps (one token) keep the 4-bit graph, whose weight stream is the decode
floor. Cost: the int8 copy of the other weights plus down_proj's codes again
(`prefill_weight_bytes`, ~2x the 4-bit bytes); `prefill='nbits'` runs the prompt
through the 4-bit graph instead (no extra memory). 8-bit codes use the int8 prefill only on
CPUs with VNNI (without it u8 x s8 products of full-range int8 codes can saturate).
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from qail_ros.quant.ort_int4 import (MatMulNBitsGraph, OrtInt4Error, concat_weights,
                                     extract_weight, fusable, is_int4_linear, is_silu,
                                     matmul_nbits_bytes, ort_available)

__all__ = ['OrtLlamaDecoder', 'llama_parts', 'cuda_available', 'DEVICES', 'KV_DTYPES',
           'PREFILLS']

#: the KV cache's capacity grows in steps of this many positions
CAPACITY_STEP = 64
#: where the graph runs: 'cpu' (MLAS kernels) or 'cuda' (onnxruntime-gpu's CUDA kernels)
DEVICES = ('cpu', 'cuda')
#: KV cache (and attention) dtype: float32 (CPU default), float16 (CUDA; on CPU measured
#: slower: 27.9 vs 25.5 ms/token at the ~1 B layout)
KV_DTYPES = ('float32', 'float16')
#: how the prompt is run: 'int8' (a second graph with int8 GEMMs, per-token int8
#: activations), 'nbits' (the decode graph's MatMulNBits), 'auto' (int8 on CPU when it can)
PREFILLS = ('auto', 'int8', 'nbits')
#: projections the int8 prefill graph leaves on MatMulNBits (per-block int8 activations): the
#: input of down_proj (silu(gate) * up) is heavy-tailed, so one int8 scale per token loses
#: its small values (measured: logits 8 % of their scale off the 4-bit graph's at the ~1 B
#: layout with down_proj in int8)
INT8_PREFILL_SKIP = ('down_proj',)


def cuda_available() -> bool:
    """True when onnxruntime has its CUDA execution provider (onnxruntime-gpu + a GPU)."""
    try:
        import onnxruntime as ort
    except ImportError:
        return False
    return 'CUDAExecutionProvider' in ort.get_available_providers()


def _require_cuda() -> None:
    if not cuda_available():
        raise OrtInt4Error("device 'cuda' needs onnxruntime's CUDAExecutionProvider: install "
                           'onnxruntime-gpu (Jetson: the JetPack wheel of onnxruntime-gpu) on a '
                           "machine with an NVIDIA GPU, or use device 'cpu'")


_STATIC_ROPE = ('default', 'linear', 'llama3', None)


def llama_parts(model: nn.Module) -> tuple[Any, Any, Any]:
    """(the LlamaModel with .layers / .norm / .embed_tokens / .rotary_emb, lm_head, config)
    of a transformers LlamaForCausalLM-like model; a clear error for anything else. Typed Any:
    the parts are read by attribute name (duck typing), whatever their classes."""
    inner = getattr(model, 'model', None)
    head = getattr(model, 'lm_head', None)
    cfg = getattr(model, 'config', None)
    need = ('layers', 'norm', 'embed_tokens', 'rotary_emb')
    if inner is None or head is None or cfg is None or not all(hasattr(inner, n) for n in need):
        raise OrtInt4Error(f'{type(model).__name__} is not a Llama causal LM (model.layers, '
                           'model.norm, model.embed_tokens, model.rotary_emb, lm_head): pass '
                           'a transformers LlamaForCausalLM, e.g. OpenVLAModel.language_model')
    return inner, head, cfg


def _per_channel(w) -> bool:
    """True when a weight's blocks share each row's scale and zero point (per channel)."""
    return w.scales.shape[1] == 1 or not bool((w.scales != w.scales[:, :1]).any() or (
        w.zeros != w.zeros[:, :1]).any())


class OrtLlamaDecoder:
    """The decoder layers + final norm + lm_head of a Llama as one onnxruntime session with
    an in-place KV cache (see the module docstring). Inference only, batch 1."""

    #: initializer bytes above which the graph is handed over as a file with external data
    EXTERNAL_DATA_BYTES = 1 << 30

    def __init__(self, model: nn.Module, *, threads: int = 1, accuracy_level: int = 4,
                 capacity: int = 320, device: str = 'cpu', kv_dtype: str | None = None,
                 prefill: str = 'auto', int8_prefill_skip: tuple[str, ...] = INT8_PREFILL_SKIP):
        if not ort_available():
            raise OrtInt4Error('onnxruntime / onnx are not installed: pip install onnxruntime '
                               'onnx')
        if device not in DEVICES:
            raise OrtInt4Error(f'device {device!r}: choose one of {list(DEVICES)}')
        kv_dtype = kv_dtype or ('float16' if device == 'cuda' else 'float32')
        if kv_dtype not in KV_DTYPES:
            raise OrtInt4Error(f'kv_dtype {kv_dtype!r}: choose one of {list(KV_DTYPES)}')
        if device == 'cuda' and kv_dtype != 'float16':
            raise OrtInt4Error("device 'cuda' needs kv_dtype 'float16' (onnxruntime's CUDA "
                               'GroupQueryAttention runs in half precision)')
        self.device, self.kv_dtype = device, kv_dtype
        self._np_kv = np.dtype(kv_dtype)
        if device == 'cuda':
            _require_cuda()
        inner, head, cfg = llama_parts(model)
        rope_cfg = (getattr(cfg, 'rope_parameters', None) or getattr(cfg, 'rope_scaling', None)
                    or {})
        rope = rope_cfg.get('rope_type', rope_cfg.get('type'))
        if rope not in _STATIC_ROPE:
            raise OrtInt4Error(f'rope scaling {rope!r} depends on the sequence length: the '
                               'whole-graph decoder supports default / linear / llama3 RoPE; '
                               'use convert_to_ort_int4 (per-layer sessions) for this model')
        self.hidden = int(cfg.hidden_size)
        self.heads = int(cfg.num_attention_heads)
        self.kv_heads = int(getattr(cfg, 'num_key_value_heads', None) or self.heads)
        self.head_dim = int(getattr(cfg, 'head_dim', None) or self.hidden // self.heads)
        self.layers = len(inner.layers)
        self.vocab = int(head.out_features)
        self.max_positions = int(getattr(cfg, 'max_position_embeddings', 4096))
        self.accuracy_level = accuracy_level
        self.threads = int(threads)
        self._int8 = False              # True while the int8 prefill graph is built
        self._int8_skip = tuple(int8_prefill_skip)
        self.embed_tokens = inner.embed_tokens
        self.weight_bytes = 0
        #: weights the graph holds (linears in x out, adapters, norm vectors)
        self.parameters = 0
        if prefill not in PREFILLS:
            raise OrtInt4Error(f'prefill {prefill!r}: choose one of {list(PREFILLS)}')
        self.session = self._session(self._build(inner, head, float(cfg.rms_norm_eps)))
        #: bytes of the int8 prefill graph's weights (0 without one)
        self.prefill_weight_bytes = 0
        self.prefill_session: Any = None
        self.prefill = 'nbits'
        why = self._int8_prefill_blocker(inner, head) if prefill != 'nbits' else 'asked'
        if why is None:
            counted = self.weight_bytes, self.parameters
            self._int8 = True
            self.prefill_session = self._session(self._build(inner, head,
                                                             float(cfg.rms_norm_eps)))
            self._int8 = False
            # float weights (norms, adapters, a float lm_head) the second graph holds again
            self.prefill_weight_bytes += self.weight_bytes - counted[0]
            self.weight_bytes, self.parameters = counted
            self.prefill = 'int8'
        elif prefill == 'int8':
            raise OrtInt4Error(f'prefill int8 is not possible here: {why}; use prefill '
                               "'nbits'")
        self._io: Any = None            # bound by _ensure_capacity (the KV buffers)
        self._io_prefill: Any = None
        self._capacity = 0
        self._kv: list = []
        self.position = 0
        self._ensure_capacity(min(int(capacity), self.max_positions))

    # -- graph ------------------------------------------------------------------------------
    def _rotary_cache(self, inner: Any) -> tuple[np.ndarray, np.ndarray]:
        """cos, sin (max_positions, head_dim / 2) from the model's rotary module."""
        pos = torch.arange(self.max_positions)[None]
        probe = torch.zeros(1, 1, self.head_dim)
        with torch.no_grad():
            cos, sin = inner.rotary_emb(probe, pos)
        half = self.head_dim // 2
        return (cos[0, :, :half].float().numpy().copy(),
                sin[0, :, :half].float().numpy().copy())

    def _linear(self, g: MatMulNBitsGraph, x: str, mods: list[Any], names: list[str]) -> str:
        """MatMulNBits over one or more INT4 projections of the same input (outputs
        concatenated on the last axis), plus their LoRA adapters when they have them."""
        from qail_ros.quant.lora import LoRALinear
        adapters = [m if isinstance(m, LoRALinear) else None for m in mods]
        mods = [a.base if a is not None else m for m, a in zip(mods, adapters)]
        y = self._base_linear(g, x, mods, names)
        if not any(a is not None for a in adapters):
            return y
        return g.op('Add', [y, self._lora(g, x, mods, adapters)])

    def _lora(self, g: MatMulNBitsGraph, x: str, mods: list[Any], adapters: list) -> str:
        """sum_i scaling_i B_i A_i x for the projections' adapters, as two float32 MatMuls:
        A stacked (sum of ranks x in), B block-diagonal (sum of ranks x outputs, zero columns
        for projections without one); in float32 beside the INT4 base, as LoRALinear."""
        a_rows, blocks = [], []
        ranks = sum(a.rank for a in adapters if a is not None)
        col = 0
        for m, a in zip(mods, adapters):
            n = int(m.out_features)
            b = np.zeros((ranks, n), np.float32)
            if a is not None:
                a_rows.append(a.lora_a.detach().float().numpy())
                b[col:col + a.rank] = (a.scaling * a.lora_b.detach().float()).numpy().T
                col += a.rank
            blocks.append(b)
        a_t = np.concatenate(a_rows).T.copy()                 # (in, ranks)
        b_t = np.concatenate(blocks, axis=1)                  # (ranks, outputs)
        self.weight_bytes += (a_t.size + b_t.size) * 4
        self.parameters += sum(a.lora_a.numel() + a.lora_b.numel() for a in adapters
                               if a is not None)
        low = g.op('MatMul', [x, g.const('lora_a', a_t)])
        return g.op('MatMul', [low, g.const('lora_b', b_t)])

    def _base_linear(self, g: MatMulNBitsGraph, x: str, mods: list[Any],
                     names: list[str]) -> str:
        for m, name in zip(mods, names):
            if not is_int4_linear(m, max_bits=8):
                raise OrtInt4Error(f'{name} ({type(m).__name__}) is not INT4 / INT8 '
                                   'weight-only: quantize_ the decoder with WeightOnlyRTN('
                                   'bits=4 or 8) or Int4WeightOnlyAWQ first')
        max_block = 128 if self.device == 'cuda' else 256
        ws = [extract_weight(m, name, max_bits=8, max_block=max_block)
              for m, name in zip(mods, names)]
        if self._int8 and all(_per_channel(w) and w.input_scale is None for w in ws) and not (
                any(n.rsplit('.', 1)[-1] in self._int8_skip for n in names)):
            return self._int8_linear(g, x, ws)
        self.weight_bytes += sum(matmul_nbits_bytes(w) for w in ws)
        self.parameters += sum(w.n * w.k + (0 if w.bias is None else w.n) for w in ws)
        if len(ws) == 1:
            return g.matmul_nbits(x, ws[0], self.accuracy_level)
        if fusable(ws):
            return g.matmul_nbits(x, concat_weights(ws), self.accuracy_level)
        return g.op('Concat', [g.matmul_nbits(x, w, self.accuracy_level) for w in ws], axis=-1)

    # -- int8 prefill ---------------------------------------------------------------------
    def _int8_prefill_blocker(self, inner: Any, head: Any) -> str | None:
        """None when the int8 prefill graph can be built, else why not."""
        if self.device != 'cpu':
            return f'device {self.device!r} (the int8 prefill graph is for the CPU)'
        from qail_ros.engines.base import cpu_features
        vnni = bool({'avx512_vnni', 'avx_vnni', 'asimddp'} & set(cpu_features()))
        mods = [(f'layers.{i}.{n}', getattr(getattr(layer, part), n))
                for i, layer in enumerate(inner.layers)
                for part, names in (('self_attn', ('q_proj', 'k_proj', 'v_proj', 'o_proj')),
                                    ('mlp', ('gate_proj', 'up_proj', 'down_proj')))
                for n in names]
        from qail_ros.quant.lora import LoRALinear
        for name, m in mods:
            m = m.base if isinstance(m, LoRALinear) else m
            try:
                w = extract_weight(m, name, max_bits=8)
            except OrtInt4Error as exc:
                return str(exc)
            if not _per_channel(w):
                return f'{name} is group-wise quantized (int8 prefill needs per-channel codes)'
            if w.input_scale is not None:
                return f'{name} has AWQ input scales'
            if w.bits > 4 and not vnni:
                return f'{name} has 8-bit codes and this CPU has no VNNI (u8 x s8 saturation)'
        return None

    def _int8_linear(self, g: MatMulNBitsGraph, x: str, ws: list) -> str:
        """y = x @ W^T for per-channel codes: per-row int8 activations, MatMulInteger with
        the codes as int8, int32 -> float times row scale and channel scale (+ bias)."""
        xq, row_scale = self._rows_int8(g, x)
        b = np.concatenate([(w.codes.numpy().astype(np.int16) - w.zeros.numpy()[:, :1])
                            .astype(np.int8) for w in ws]).T.copy()          # (k, n) int8
        col = np.concatenate([w.scales.numpy()[:, 0] for w in ws]).astype(np.float32)
        self.prefill_weight_bytes += b.size + col.size * 4
        acc = g.op('MatMulInteger', [xq, g.const('Bq', b), g.const('zp', np.uint8(128))])
        y = g.op('Mul', [g.op('Mul', [g.op('Cast', [acc], to=1), row_scale]),
                         g.const('cs', col)])
        if any(w.bias is not None for w in ws):
            bias = np.concatenate([w.bias.numpy() if w.bias is not None else np.zeros(w.n)
                                   for w in ws]).astype(np.float32)
            y = g.op('Add', [y, g.const('bias', bias)])
        return y

    def _rows_int8(self, g: MatMulNBitsGraph, x: str) -> tuple[str, str]:
        """(uint8 codes with zero point 128, float row scales (..., 1)) of activations x:
        symmetric int8 per row (token), scale = max |x| / 127; once per input."""
        cache = g.__dict__.setdefault('_rowq', {})
        if x not in cache:
            top = g.op('ReduceMax', [g.op('Abs', [x])], axes=[-1], keepdims=1)
            scale = g.op('Div', [g.op('Max', [top, g.const('eps', np.float32(1e-12))]),
                                 g.const('c127', np.float32(127.0))])
            q = g.op('Round', [g.op('Div', [x, scale])])
            u8 = g.op('Cast', [g.op('Add', [q, g.const('c128', np.float32(128.0))])], to=2)
            cache[x] = (u8, scale)
        return cache[x]

    def _norm(self, g: MatMulNBitsGraph, x: str, norm: Any, eps: float) -> str:
        self.parameters += norm.weight.numel()
        w = g.const('norm', norm.weight.detach().float().numpy())
        return g.op('SimplifiedLayerNormalization', [x, w], axis=-1, epsilon=eps,
                    stash_type=1)

    def _build(self, inner: Any, head: Any, eps: float):
        """The decoder as an onnx ModelProto (weights as initializers)."""
        from onnx import TensorProto
        from onnx import helper as h
        g = MatMulNBitsGraph(self.hidden)
        f32, i32 = TensorProto.FLOAT, TensorProto.INT32
        half = self.kv_dtype == 'float16'
        kv_t = TensorProto.FLOAT16 if half else f32
        kv_shape: list[int | str] = [1, self.kv_heads, 'capacity', self.head_dim]
        g.inputs = [h.make_tensor_value_info('inputs_embeds', f32, [1, 'S', self.hidden]),
                    h.make_tensor_value_info('seqlens_k', i32, [1]),
                    h.make_tensor_value_info('total_sequence_length', i32, [])]
        outputs = []
        cos, sin = self._rotary_cache(inner)
        cos_name, sin_name = (g.const(n, c.astype(self._np_kv)) for n, c in
                              (('cos', cos), ('sin', sin)))
        x = 'inputs_embeds'
        for i, layer in enumerate(inner.layers):
            attn, mlp = layer.self_attn, layer.mlp
            p = f'model.layers.{i}'
            for kind in ('key', 'value'):
                g.inputs.append(h.make_tensor_value_info(f'past_{kind}_{i}', kv_t, kv_shape))
                outputs.append(h.make_tensor_value_info(f'present_{kind}_{i}', kv_t, kv_shape))
            hs = self._norm(g, x, layer.input_layernorm, eps)
            qkv = self._linear(g, hs, [attn.q_proj, attn.k_proj, attn.v_proj],
                               [f'{p}.self_attn.{n}' for n in ('q_proj', 'k_proj', 'v_proj')])
            if half:                            # attention in float16, the rest float32
                qkv = g.op('Cast', [qkv], to=kv_t)
            att = g.fresh_name('attn')
            g.nodes.append(h.make_node(
                'GroupQueryAttention',
                [qkv, '', '', f'past_key_{i}', f'past_value_{i}', 'seqlens_k',
                 'total_sequence_length', cos_name, sin_name],
                [att, f'present_key_{i}', f'present_value_{i}'], domain='com.microsoft',
                num_heads=self.heads, kv_num_heads=self.kv_heads, do_rotary=1,
                rotary_interleaved=0, scale=float(self.head_dim ** -0.5)))
            if half:
                att = g.op('Cast', [att], to=f32)
            o = self._linear(g, att, [attn.o_proj], [f'{p}.self_attn.o_proj'])
            x = g.op('Add', [x, o])
            hs = self._norm(g, x, layer.post_attention_layernorm, eps)
            if not is_silu(getattr(mlp, 'act_fn', None)):
                raise OrtInt4Error(f'{p}.mlp: activation {type(mlp.act_fn).__name__} is not '
                                   'SiLU: the graph implements LLaMA\'s gated-SiLU MLP only')
            inter = int(mlp.gate_proj.out_features)
            gu = self._linear(g, hs, [mlp.gate_proj, mlp.up_proj],
                              [f'{p}.mlp.gate_proj', f'{p}.mlp.up_proj'])
            split = g.const('split', np.array([inter, inter], np.int64))
            gate, up = g.fresh_name('gate'), g.fresh_name('up')
            g.nodes.append(h.make_node('Split', [gu, split], [gate, up], axis=-1))
            act = g.op('Mul', [g.op('Mul', [gate, g.op('Sigmoid', [gate])]), up])
            down = self._linear(g, act, [mlp.down_proj], [f'{p}.mlp.down_proj'])
            x = g.op('Add', [x, down])
        # the last position only: OpenVLA's greedy decode reads nothing else
        last = g.op('Slice', [x, g.const('start', np.array([-1], np.int64)),
                              g.const('end', np.array([np.iinfo(np.int64).max], np.int64)),
                              g.const('axis', np.array([1], np.int64))])
        hs = self._norm(g, last, inner.norm, eps)
        if is_int4_linear(head, max_bits=8):
            logits = self._linear(g, hs, [head], ['lm_head'])
        else:
            w = head.weight.detach().float()
            self.weight_bytes += w.numel() * 4
            self.parameters += w.numel()
            logits = g.op('MatMul', [hs, g.const('lm_head', w.t().contiguous().numpy())])
            if getattr(head, 'bias', None) is not None:
                logits = g.op('Add', [logits, g.const('lm_bias',
                                                      head.bias.detach().float().numpy())])
        g.nodes.append(h.make_node('Reshape', [logits, g.const(
            'shape', np.array([1, self.vocab], np.int64))], ['logits']))
        outputs.insert(0, h.make_tensor_value_info('logits', f32, [1, self.vocab]))
        graph = h.make_graph(g.nodes, 'qail_ort_llama', g.inputs, outputs,
                             initializer=g.inits)
        model = h.make_model(graph, opset_imports=[h.make_opsetid('', 17),
                                                   h.make_opsetid('com.microsoft', 1)])
        model.ir_version = 8
        return model

    def _session(self, model):
        """The InferenceSession; graphs over EXTERNAL_DATA_BYTES of weights (protobuf stops
        at 2 GiB: a 7B backbone is ~3.5 GB in INT4) go through a temporary .onnx + external
        data file, which is unlinked once the session holds the weights."""
        import onnxruntime as ort
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = self.threads
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        providers = (['CUDAExecutionProvider', 'CPUExecutionProvider'] if self.device == 'cuda'
                     else ['CPUExecutionProvider'])
        if sum(len(t.raw_data) for t in model.graph.initializer) < self.EXTERNAL_DATA_BYTES:
            return ort.InferenceSession(model.SerializeToString(), opts, providers=providers)
        import tempfile

        import onnx
        with tempfile.TemporaryDirectory(prefix='qail_ort_llama_') as tmp:
            path = f'{tmp}/decoder.onnx'
            onnx.save_model(model, path, save_as_external_data=True,
                            all_tensors_to_one_file=True, location='decoder.onnx.data',
                            size_threshold=1024)
            return ort.InferenceSession(path, opts, providers=providers)

    # -- cache ------------------------------------------------------------------------------
    def _ensure_capacity(self, needed: int) -> None:
        import onnxruntime as ort
        if needed <= self._capacity:
            return
        if needed > self.max_positions:
            raise OrtInt4Error(f'sequence of {needed} positions is longer than the model\'s '
                               f'max_position_embeddings {self.max_positions}: shorten the '
                               'prompt')
        cap = min(-(-needed // CAPACITY_STEP) * CAPACITY_STEP, self.max_positions)
        shape = (1, self.kv_heads, cap, self.head_dim)
        new = []
        for old in self._kv or [None] * (2 * self.layers):
            buf = np.zeros(shape, self._np_kv)
            if old is not None and self.position:     # (on CUDA .numpy() copies to the host)
                buf[:, :, :self.position] = old.numpy()[:, :, :self.position]
            new.append(ort.OrtValue.ortvalue_from_numpy(buf, self.device, 0))
        self._kv, self._capacity = new, cap     # CPU OrtValues keep their numpy buffers alive
        self._io = self._bind(self.session)
        if self.prefill_session is not None:     # the same KV buffers
            self._io_prefill = self._bind(self.prefill_session)

    def _bind(self, session):
        io = session.io_binding()
        io.bind_output('logits', 'cpu')            # first: output 0 of get_outputs()
        for i in range(self.layers):
            for j, kind in enumerate(('key', 'value')):
                v = self._kv[2 * i + j]
                io.bind_ortvalue_input(f'past_{kind}_{i}', v)
                io.bind_ortvalue_output(f'present_{kind}_{i}', v)
        return io

    @property
    def capacity(self) -> int:
        """Positions the KV cache holds now (it grows on demand)."""
        return self._capacity

    @property
    def cache_bytes(self) -> int:
        return (2 * self.layers * self.kv_heads * self._capacity * self.head_dim
                * self._np_kv.itemsize)

    def reset(self) -> None:
        """Start a new sequence (the cache is overwritten, not cleared)."""
        self.position = 0

    # -- inference --------------------------------------------------------------------------
    def embed(self, token_ids) -> Tensor:
        """Token ids (n,) -> (1, n, hidden) float32 embeddings (the model's embed_tokens)."""
        ids = torch.as_tensor(token_ids, dtype=torch.long).reshape(1, -1)
        with torch.no_grad():
            return self.embed_tokens(ids).float()

    def step(self, inputs_embeds: Tensor) -> Tensor:
        """Append (1, S, hidden) embeddings to the sequence; the last position's logits
        (1, vocab) float32."""
        if inputs_embeds.dim() != 3 or inputs_embeds.shape[0] != 1 or (
                inputs_embeds.shape[2] != self.hidden):
            raise OrtInt4Error(f'inputs_embeds of shape {tuple(inputs_embeds.shape)}: the '
                               f'decoder takes (1, S, {self.hidden}) (batch 1)')
        s = int(inputs_embeds.shape[1])
        total = self.position + s
        self._ensure_capacity(total)
        x = inputs_embeds.detach()
        x = x if x.dtype is torch.float32 else x.float()
        prefill = s > 1 and self.prefill_session is not None
        io = self._io_prefill if prefill else self._io
        io.bind_cpu_input('inputs_embeds', np.ascontiguousarray(x.numpy()))
        io.bind_cpu_input('seqlens_k', np.array([total - 1], np.int32))
        io.bind_cpu_input('total_sequence_length', np.array(total, np.int32))
        (self.prefill_session if prefill else self.session).run_with_iobinding(io)
        self.position = total
        # a copy: onnxruntime reuses the output buffer on the next step
        return torch.from_numpy(np.array(io.get_outputs()[0].numpy(), copy=True))
