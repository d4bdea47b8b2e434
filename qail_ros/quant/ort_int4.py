"""INT4 weight-only linears on onnxruntime's `MatMulNBits` (com.microsoft) CPU kernel.

    convert_to_ort_int4(model, threads=1, accuracy_level=4)   in place, after quantize_ with a
                                                               <= 4-bit weight-only config

Why: torch's CPU int4 kernel (`Int4WeightOnlyLinear`, bf16 activations) leaves decode at about
half the memory-bandwidth floor; onnxruntime's MLAS kernel for `MatMulNBits` with
accuracy_level 4 (activations quantized to int8 per block, int8 dot products, VNNI where the
CPU has it) streams 4-bit weights much closer to the floor, at batch 1 and at prefill sizes.

Each replacement layer owns one `onnxruntime.InferenceSession` built in memory with
`onnx.helper`: input A float32 [M, K] -> MatMulNBits -> float32 [M, N]. The weights are the
SAME codes as the qail_ros layer (`WeightOnlyRTN` / `Int4WeightOnlyAWQ`, group-wise or per
channel, symmetric or asymmetric), so the dequantized weight is identical:
    w = (q_u - z_u) * scale,   q_u = q + 8 (signed codes) or q (unsigned), z_u likewise
stored as MatMulNBits wants it: B uint8 [N, K / block, block / 2] (element 2i of a block in
the low nibble of byte i), scales float32 [N * K / block], zero_points uint8
[N * ceil(blocks / 2)] packed the same way (omitted when every z_u is 8, MatMulNBits' default).
A group of 16..256 (a power of two) is one block; a larger group repeats its scale over
the largest block that divides it; per channel (one group over all K inputs) uses blocks of
256, the last one padded when K is not a multiple (the padding codes dequantize to 0).
Why 256 for per channel: MLAS streams 4-bit weights faster in larger blocks (measured on a
2-core EPYC, 64 chained 4096x4096 MatMulNBits, accuracy_level 4, one thread: 0.66-0.72 of
the read bandwidth at block 128, 0.84-0.90 at 256), and a per-channel weight is exact in any
block; activations are then rounded to int8 per 256 values instead of per 128.

Call overhead: one session.run costs ~tens of microseconds from Python, so projections that
read the same input are fused (`fuse=True`):
  - q_proj / k_proj / v_proj (and gate_proj / up_proj when not in a fused MLP): one
    MatMulNBits over the concatenated weights (one MatMulNBits each, concatenated, in one
    session when their blocks or AWQ input scales differ); each projection returns its
    column slice.
    The fused output is cached against the input tensor (identity and version), so calling
    them in any order, or on different inputs, stays correct.
  - a gated-SiLU MLP (a module with gate_proj, up_proj, down_proj and a SiLU `act_fn`, as in
    LLaMA / Mistral / Qwen2): one session computing down(silu(gate(x)) * up(x)).
AWQ input scales (`input_scale` s: the layer computes (x / s) @ Q(W * s)^T) are a Div node
in front of the layer's MatMulNBits, inside the same session.
Numerics: accuracy_level 4 rounds each activation block of `block_size` values to int8
(symmetric, per row), so outputs differ from the dequantized-weight float matmul by roughly
1e-3 of the output scale; accuracy_level 1 computes in float32 (float rounding only, slower).
Inference only: no gradients flow through these layers.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from qail_ros.errors import QailRosError
from qail_ros.quant.modules_util import set_module

__all__ = ['convert_to_ort_int4', 'OrtInt4Linear', 'OrtInt4Slice', 'OrtInt4GatedMLP',
           'OrtInt4Error', 'ORT_MODULES', 'ort_available',
           # building blocks of the whole-graph decoder (ort_llama)
           'Int4Weight', 'extract_weight', 'concat_weights', 'fusable', 'MatMulNBitsGraph',
           'matmul_nbits_bytes', 'is_int4_linear', 'is_silu']

log = logging.getLogger('qail_ros.quant')

#: projection names fused into one MatMulNBits when they read the same input
FUSE_GROUPS = (('q_proj', 'k_proj', 'v_proj'), ('gate_proj', 'up_proj'))
#: MatMulNBits' block sizes (onnxruntime 1.31: 16..256)
_BLOCKS = (256, 128, 64, 32, 16)


class OrtInt4Error(QailRosError, ValueError):
    """A layer or setting the onnxruntime INT4 path cannot take (the message says the fix)."""


def ort_available() -> bool:
    """True when onnxruntime and onnx are importable."""
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


@dataclass
class Int4Weight:
    """One weight in MatMulNBits terms: unsigned codes, per-block scales and zero points
    (4-bit storage; 8-bit for layers of 5..8 bits, which only the whole-graph decoder takes)."""
    codes: Tensor               # (n, k) uint8 in [0, 2^bits - 1]
    scales: Tensor              # (n, blocks) float32
    zeros: Tensor               # (n, blocks) uint8 in [0, 2^bits - 1]
    block: int
    bias: Tensor | None         # (n,) float32
    input_scale: Tensor | None  # (k,) AWQ input scale, applied before the matmul
    bits: int = 4               # MatMulNBits storage bits: 4 or 8

    @property
    def n(self) -> int:
        return self.codes.shape[0]

    @property
    def k(self) -> int:
        return self.codes.shape[1]


def extract_weight(layer: nn.Module | None, name: str, max_bits: int = 4,
                   max_block: int = _BLOCKS[0]) -> Int4Weight:
    """Codes, scales and zero points of an Int4WeightOnlyLinear or weight-only QuantLinear
    (up to `max_bits`: 4, or 8 for the whole-graph decoder's 8-bit MatMulNBits), in
    MatMulNBits blocks of at most `max_block` (the decoder graph asks 128 on CUDA, where
    onnxruntime's fused small-batch 4-bit kernels are dispatched for blocks 16..128 and
    other sizes fall back to dequantize + GEMM)."""
    from qail_ros.quant.integer import Int4WeightOnlyLinear
    from qail_ros.quant.modules import QuantLinear
    if isinstance(layer, Int4WeightOnlyLinear):
        codes, scale, zero = layer.codes(), layer.scale, layer.zero_point
        signed, group, bits = layer.signed, layer.group_size, layer.bits
        bias, input_scale = layer.bias, layer.input_scale
    elif (isinstance(layer, QuantLinear) and layer.weight_quant is not None
          and layer.input_quant is None):
        wq = layer.weight_quant
        n, k = layer.weight.shape
        groups = wq.scale.shape[1] if wq.granularity == 'group' else 1
        codes = wq.int_codes(layer.weight.detach())
        scale, zero = (t.detach().expand(n, groups) if t.dim() == 0
                       else t.detach().reshape(n, groups) for t in (wq.scale, wq.zero_point))
        signed, group, bits = wq._signed, k // groups, wq.bits
        bias, input_scale = layer.bias, layer.input_scale
    else:
        raise OrtInt4Error(f'layer {name} ({type(layer).__name__}) is not a weight-only '
                           'quantized Linear: quantize_ it with WeightOnlyRTN(bits=4) or '
                           'Int4WeightOnlyAWQ first')
    if bits > max_bits:
        raise OrtInt4Error(f'layer {name} has {bits}-bit weights: this onnxruntime path takes '
                           f'up to {max_bits} bits; quantize with bits <= {max_bits} or keep '
                           'convert_to_integer')
    storage = 4 if bits <= 4 else 8
    n, k = codes.shape
    sizes = [b for b in _BLOCKS if b <= max_block]
    if group == k:                  # per channel: blocks of 256 (fewer for a short K), padded
        block = next(b for b in reversed(sizes) if b >= min(k, sizes[0]))
    else:
        block = next((b for b in sizes if group % b == 0), 0)
        if block < _BLOCKS[-1]:
            raise OrtInt4Error(f'layer {name}: group size {group} over {k} inputs has no '
                               'MatMulNBits block (16..256, a power of two dividing the '
                               'group): quantize per channel or with group_size 16..256, or '
                               'exclude the layer')
    rep = -(-group // block)
    off = 2 ** (storage - 1) if signed else 0
    zeros = (zero.detach().float() + off).repeat_interleave(rep, dim=1)
    top = 2 ** storage - 1
    if bool((zeros != zeros.round()).any()) or float(zeros.min()) < 0 or float(
            zeros.max()) > top:
        raise OrtInt4Error(f'layer {name}: zero points outside the {storage}-bit code range: '
                           f're-quantize it with a {storage}-bit weight-only config')
    return Int4Weight(
        codes=(codes.to(torch.int16) + off).to(torch.uint8),
        scales=scale.detach().float().repeat_interleave(rep, dim=1).contiguous(),
        zeros=zeros.to(torch.uint8), block=block,
        bias=None if bias is None else bias.detach().float().clone(),
        input_scale=None if input_scale is None else input_scale.detach().float().clone(),
        bits=storage)


def concat_weights(ws: list[Int4Weight]) -> Int4Weight:
    """Weights stacked along the outputs (same inputs, block and input scale)."""
    bias = None
    if any(w.bias is not None for w in ws):
        bias = torch.cat([w.bias if w.bias is not None else torch.zeros(w.n) for w in ws])
    return Int4Weight(torch.cat([w.codes for w in ws]), torch.cat([w.scales for w in ws]),
                      torch.cat([w.zeros for w in ws]), ws[0].block, bias, ws[0].input_scale,
                      ws[0].bits)


def _pack_nibbles(u: np.ndarray) -> np.ndarray:
    """uint8 values in [0, 15] along the last axis -> bytes, element 2i in the low nibble."""
    if u.shape[-1] % 2:
        u = np.concatenate([u, np.zeros((*u.shape[:-1], 1), np.uint8)], axis=-1)
    return (u[..., 0::2] | (u[..., 1::2] << 4)).astype(np.uint8)


class MatMulNBitsGraph:
    """A small ONNX graph under construction: float32 input 'x', MatMulNBits nodes."""

    def __init__(self, k: int):
        from onnx import TensorProto, helper
        self._h, self._tp = helper, TensorProto
        self.nodes: list = []
        self.inits: list = []
        self.inputs = [helper.make_tensor_value_info('x', TensorProto.FLOAT, ['M', k])]
        self._count = 0

    def fresh_name(self, stem: str) -> str:
        """A name not used yet in this graph: `stem` + a counter."""
        self._count += 1
        return f'{stem}{self._count}'

    def const(self, stem: str, array: np.ndarray | np.generic) -> str:
        """Add `array` as an initializer (a constant of the graph); its name."""
        from onnx import numpy_helper
        name = self.fresh_name(stem)
        self.inits.append(numpy_helper.from_array(np.ascontiguousarray(array), name))
        return name

    def matmul_nbits(self, a: str, w: Int4Weight, accuracy_level: int) -> str:
        n, k, block = w.n, w.k, w.block
        blocks = -(-k // block)
        if w.input_scale is not None:            # AWQ: (x / s) @ Q(W * s)^T
            a = self.op('Div', [a, self.const('s', w.input_scale.numpy())])
        packed = _pack_nibbles if w.bits == 4 else np.asarray
        b = packed(_padded_codes(w).reshape(n, blocks, block))
        ins = [a, self.const('B', b), self.const('scales', w.scales.numpy().reshape(-1))]
        if bool((w.zeros != 2 ** (w.bits - 1)).any()):      # else the op's default
            ins.append(self.const('zp', packed(w.zeros.numpy()).reshape(-1)))
        if w.bias is not None:
            ins += [''] * (5 - len(ins)) + [self.const('bias', w.bias.numpy())]
        out = self.fresh_name('y')
        self.nodes.append(self._h.make_node(
            'MatMulNBits', ins, [out], domain='com.microsoft', K=k, N=n, bits=w.bits,
            block_size=block, accuracy_level=accuracy_level))
        return out

    def op(self, op_type: str, ins: list[str], **attrs) -> str:
        out = self.fresh_name(op_type.lower())
        self.nodes.append(self._h.make_node(op_type, ins, [out], **attrs))
        return out

    def session(self, out: str, n: int, threads: int):
        """An InferenceSession for this graph (initializers are constants: MLAS prepacks)."""
        import onnxruntime as ort
        h = self._h
        self.nodes.append(h.make_node('Identity', [out], ['y']))
        graph = h.make_graph(self.nodes, 'qail_ort_int4', self.inputs,
                             [h.make_tensor_value_info('y', self._tp.FLOAT, ['M', n])],
                             initializer=self.inits)
        model = h.make_model(graph, opset_imports=[h.make_opsetid('', 17),
                                                   h.make_opsetid('com.microsoft', 1)])
        model.ir_version = 8
        data = model.SerializeToString()
        self.nodes, self.inits = [], []
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = int(threads)
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # no busy-waiting pool threads between calls: torch runs the rest of the model
        opts.add_session_config_entry('session.intra_op.allow_spinning', '0')
        return ort.InferenceSession(data, opts, providers=['CPUExecutionProvider'])


def _padded_codes(w: Int4Weight) -> np.ndarray:
    """(n, blocks * block) uint8 codes: K padded to whole blocks with each row's last zero
    point, so that the padding dequantizes to exactly 0."""
    codes = w.codes.numpy()
    pad = -w.k % w.block
    if not pad:
        return codes
    fill = np.repeat(w.zeros[:, -1:].numpy(), pad, axis=1)
    return np.concatenate([codes, fill], axis=1)


def matmul_nbits_bytes(w: Int4Weight) -> int:
    """Bytes MatMulNBits reads per call: packed codes (K padded to whole blocks), float32
    scales, packed zero points."""
    blocks = -(-w.k // w.block)
    zp_row = (blocks + 1) // 2 if w.bits == 4 else blocks
    zp = w.n * zp_row if bool((w.zeros != 2 ** (w.bits - 1)).any()) else 0
    return w.n * blocks * w.block * w.bits // 8 + w.n * blocks * 4 + zp


class _OrtRunner:
    """One session with float32 input 'x' [M, K] and output 'y' [M, N]; torch in and out."""

    def __init__(self, session, k: int, n: int):
        self.session, self.k, self.n = session, k, n
        self._out = ['y']

    def __call__(self, x: Tensor) -> Tensor:
        """(..., K) tensor -> (M, N) tensor in x's dtype; few torch ops (they cost ~1 us each)."""
        xf = x if x.dtype is torch.float32 else x.to(torch.float32)
        a = np.ascontiguousarray(xf.detach().numpy().reshape(-1, self.k))
        y = torch.from_numpy(self.session.run(self._out, {'x': a})[0])
        return y if x.dtype is torch.float32 else y.to(x.dtype)


class OrtInt4Linear(nn.Module):
    """Drop-in for one INT4 weight-only Linear: a single MatMulNBits session."""

    def __init__(self, layer: nn.Module, *, threads: int = 1, accuracy_level: int = 4,
                 name: str = ''):
        super().__init__()
        w = extract_weight(layer, name or type(layer).__name__)
        self.in_features, self.out_features, self.block_size = w.k, w.n, w.block
        self.accuracy_level = accuracy_level
        self.weight_bytes = matmul_nbits_bytes(w)
        g = MatMulNBitsGraph(w.k)
        y = g.matmul_nbits('x', w, accuracy_level)
        self._run = _OrtRunner(g.session(y, w.n, threads), w.k, w.n)

    def forward(self, x: Tensor) -> Tensor:
        return self._run(x).reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return (f'in_features={self.in_features}, out_features={self.out_features}, '
                f'onnxruntime MatMulNBits block {self.block_size} '
                f'accuracy_level {self.accuracy_level}')


class _FusedOutput:
    """The concatenated output of fused projections, cached per input tensor."""

    def __init__(self, runner: _OrtRunner, members: int):
        self.run, self.members = runner, members
        self._x: Tensor | None = None
        self._version = -1
        self._y: Tensor | None = None
        self._left = 0

    def __call__(self, x: Tensor) -> Tensor:
        if self._x is not x or x._version != self._version or self._y is None:
            self._y = self.run(x)
            self._x, self._version, self._left = x, x._version, self.members
        y = self._y
        self._left -= 1
        if self._left <= 0:               # every member served: drop the references
            self._x = self._y = None
        return y


class OrtInt4Slice(nn.Module):
    """One projection of a fused group: its columns of the shared MatMulNBits output."""

    def __init__(self, fused: _FusedOutput, start: int, stop: int, in_features: int,
                 weight_bytes: int, block_size: int):
        super().__init__()
        self.fused = fused
        self.start, self.stop = start, stop
        self.in_features, self.out_features = in_features, stop - start
        self.weight_bytes = weight_bytes
        self.block_size = block_size

    def forward(self, x: Tensor) -> Tensor:
        y = self.fused(x)[:, self.start:self.stop]
        return y.reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return (f'in_features={self.in_features}, out_features={self.out_features}, '
                f'columns {self.start}:{self.stop} of a fused onnxruntime MatMulNBits')


class OrtInt4GatedMLP(nn.Module):
    """down(silu(gate(x)) * up(x)) as one onnxruntime session (three MatMulNBits)."""

    def __init__(self, mlp: nn.Module, *, threads: int = 1, accuracy_level: int = 4,
                 name: str = ''):
        super().__init__()
        gate, up, down = (extract_weight(getattr(mlp, p), f'{name}.{p}')
                          for p in ('gate_proj', 'up_proj', 'down_proj'))
        self.in_features, self.out_features = gate.k, down.n
        self.weight_bytes = sum(matmul_nbits_bytes(w) for w in (gate, up, down))
        g = MatMulNBitsGraph(gate.k)
        a = g.matmul_nbits('x', gate, accuracy_level)
        b = g.matmul_nbits('x', up, accuracy_level)
        h = g.op('Mul', [g.op('Mul', [a, g.op('Sigmoid', [a])]), b])
        y = g.matmul_nbits(h, down, accuracy_level)
        self._run = _OrtRunner(g.session(y, down.n, threads), gate.k, down.n)

    def forward(self, x: Tensor) -> Tensor:
        return self._run(x).reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return (f'in_features={self.in_features}, out_features={self.out_features}, '
                'down(silu(gate(x)) * up(x)) in one onnxruntime session')


ORT_MODULES = (OrtInt4Linear, OrtInt4Slice, OrtInt4GatedMLP)


def is_int4_linear(m: nn.Module | None, max_bits: int = 4) -> bool:
    """A weight-only quantized linear of at most `max_bits` bits."""
    from qail_ros.quant.integer import Int4WeightOnlyLinear
    from qail_ros.quant.modules import QuantLinear
    if isinstance(m, Int4WeightOnlyLinear):
        return True
    return (isinstance(m, QuantLinear) and m.weight_quant is not None
            and m.input_quant is None and m.weight_quant.bits <= max_bits)


def is_silu(act) -> bool:
    return isinstance(act, nn.SiLU) or type(act).__name__ in ('SiLUActivation', 'SiLU')


def fusable(ws: list[Int4Weight]) -> bool:
    """Whether weights can be concatenated into one MatMulNBits (same K, block, input scale)."""
    first = ws[0]
    return all(w.k == first.k and w.block == first.block and w.bits == first.bits
               and _same_scale(w.input_scale, first.input_scale) for w in ws)


def _same_scale(a: Tensor | None, b: Tensor | None) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return torch.equal(a, b)


@torch.no_grad()
def convert_to_ort_int4(model: nn.Module, *, threads: int = 1, accuracy_level: int = 4,
                        fuse: bool = True) -> nn.Module:
    """Swap INT4 weight-only layers for onnxruntime MatMulNBits layers, in place; return model.

    Takes the layers `quantize_` made (weight-only QuantLinear, <= 4 bits) or
    `convert_to_integer` made (`Int4WeightOnlyLinear`). threads: onnxruntime intra-op threads
    per session. accuracy_level: MatMulNBits compute type (4 = int8 activations, fastest;
    1 = float32). fuse: fuse q/k/v and gate/up projections and gated-SiLU MLPs (see the module
    docstring). The rest of the model (norms, attention, embeddings) is untouched: keep it in
    float32 (the sessions take float32; other dtypes are cast at the boundary).
    """
    if not ort_available():
        raise OrtInt4Error('onnxruntime / onnx are not installed: pip install onnxruntime onnx')
    if accuracy_level not in (0, 1, 2, 3, 4):
        raise OrtInt4Error(f'accuracy_level={accuracy_level!r}: use 4 (int8 compute) or 1 '
                           '(float32)')
    targets = [(n, m) for n, m in model.named_modules() if n and is_int4_linear(m)]
    if not targets:
        raise OrtInt4Error(f'{type(model).__name__} has no INT4 weight-only layers: run '
                           'quantize_(model, WeightOnlyRTN(bits=4, granularity="group")) first')
    done: set[str] = set()
    kw = dict(threads=threads, accuracy_level=accuracy_level)
    if fuse:
        for name, parent in list(model.named_modules()):
            prefix = f'{name}.' if name else ''
            kids = {p: getattr(parent, p, None) for p in ('gate_proj', 'up_proj', 'down_proj')}
            if (all(is_int4_linear(m) for m in kids.values())
                    and is_silu(getattr(parent, 'act_fn', None))):
                if not name:
                    raise OrtInt4Error('the model itself is a gated MLP: wrap it in '
                                       'nn.Sequential, or pass fuse=False')
                set_module(model, name, OrtInt4GatedMLP(parent, name=name, **kw))
                done.update(prefix + p for p in kids)
                continue
            for group in FUSE_GROUPS:
                mods = [getattr(parent, p, None) for p in group]
                if (not all(is_int4_linear(m) for m in mods)
                        or any(prefix + p in done for p in group)):
                    continue
                ws = [extract_weight(m, prefix + p) for m, p in zip(mods, group)]
                k, n = ws[0].k, sum(w.n for w in ws)
                if any(w.k != k for w in ws):
                    continue
                g = MatMulNBitsGraph(k)
                if fusable(ws):        # one MatMulNBits over the concatenated weights
                    y = g.matmul_nbits('x', concat_weights(ws), accuracy_level)
                else:                   # e.g. AWQ's scale per projection: one each, concatenated
                    y = g.op('Concat', [g.matmul_nbits('x', w, accuracy_level) for w in ws],
                             axis=1)
                out = _FusedOutput(_OrtRunner(g.session(y, n, threads), k, n), len(group))
                start = 0
                for p, w in zip(group, ws):
                    setattr(parent, p, OrtInt4Slice(out, start, start + w.n, w.k,
                                                    matmul_nbits_bytes(w), w.block))
                    start += w.n
                    done.add(prefix + p)
    for name, m in targets:
        if name not in done:
            set_module(model, name, OrtInt4Linear(m, name=name, **kw))
    return model.eval()
