"""Per-token decode latency of a Llama backbone in the OpenVLA layout: FP32 / BF16 / INT8 / INT4.

    qail-ros bench decode [--small] [--threads N] [--tokens 7] [--repeats 3]
                          [--cache dynamic|static] [--attention sdpa|gemv]
                          [--policy [PATH] [--unnorm-key KEY]] [--json]

One run builds a random-weight Llama (transformers LlamaForCausalLM, OpenVLA-7B's vocabulary
of 32064 and SiLU-MLP layout, scaled down: default ~1B parameters, `--small` ~45 M for quick
runs) and times, per precision (integer weights: RTN per channel, the paper's channel-wise INT4
and what `qail-ros train-vla` writes; `--group-size 128` for group-wise; runs before
2026-11-30 01:00 UTC used group 128):
  fp32   float32 weights and activations
  bf16   bfloat16 weights and activations
  int8   every linear weight-only int8 per channel (qail_ros.quant WeightOnlyRTN(bits=8),
         torch._weight_int8pack_mm, float32 activations; slow on CPU, not in the default list)
  int8_ort  every linear weight-only int8 on the int4_ort graph below with MatMulNBits'
         8-bit storage (int8 activations per block)
  int4   every linear weight-only int4 (qail_ros.quant WeightOnlyRTN, torch's CPU int4
         kernel `_weight_int4pack_mm_for_cpu`, bfloat16 activations)
  int4_ort  the same int4 codes, the whole decoder (layers, final norm, lm_head) as ONE
         onnxruntime graph: MatMulNBits (accuracy_level 4 = int8 activations per block),
         GroupQueryAttention with rotary and an in-place float32 KV cache, one
         run_with_iobinding per step (qail_ros.quant.ort_llama.OrtLlamaDecoder: what the
         policy's int4_ort precision runs; --cache / --attention do not apply)
  int4_ort_layers  the same codes with one MatMulNBits session per linear (q/k/v fused, each
         MLP one session) inside transformers' forward (qail_ros.quant.ort_int4; float32
         elsewhere; the int4_ort of results before 2026-11-30); not in the default list
a prefill of `--prompt` tokens (OpenVLA: 256 image patches + ~20 prompt tokens), then
`--tokens` decode steps with the KV cache (OpenVLA decodes 7 action tokens), `--repeats` times.
`--cache dynamic` (default) is transformers' DynamicCache, which grows by torch.cat: every step
copies the whole cache of every layer (~13 ms/token at the ~1 B layout in float32, measured);
`--cache static` preallocates prompt + tokens positions (StaticCache, written in place), which
is what a runtime does and leaves the weights as the main memory traffic.
`--attention sdpa` (default) is torch's scaled_dot_product_attention; `gemv` computes a
single-query decode step as q.K^T (a batched GEMV) and sum(p * V) instead: torch 2.13's CPU SDPA
reads a 300-token float32 cache at ~7 GB/s for one query (~11 ms/token over 16 layers at the
~1 B layout) where the GEMV form runs at ~20 GB/s (prefill keeps SDPA).

Bandwidth floor: decoding one token reads every linear weight once (and one embedding row), so
ms_per_token >= weight bytes / memory bandwidth. The bandwidth is measured here, with the same
thread count: the best of several reads (torch sum and amax) of a buffer much larger than the
caches, taken before the models are built and after each precision; the floor uses the median
reading (all are in the JSON: on this virtual machine one command's readings swung from 34.8
to 59.2 GB/s at two threads; runs before 2026-11-30 used the larger of a before and an after
reading). fraction_of_floor = floor / measured (1.0 = at the
memory limit). When a decode step streams its weights faster than that bandwidth (measured:
the 8-bit MatMulNBits graph at 2 threads, 41 vs 36 GB/s; likely because it reads many rows
at once where a reduction reads one stream per thread), the reading under-estimates the
machine: `effective_gbps` (weight bytes / ms per token) and `fraction_of_peak` (against the
larger of the bandwidth and the fastest effective rate of the run) are reported beside it.
The weights are not all a step reads: attention reads the KV cache of every layer (at the ~1 B
layout, 276 + 4 positions x 16 layers x 2 x 2048 float32 = 70 MB, 16 % of the INT4 weights; at
OpenVLA-7B's 32 layers of 4096 it is 8 % of them). `kv_mb` (the mean per decode step) and
`fraction_of_floor_with_kv` = (weights + KV) / bandwidth / measured show how far a step is from
streaming everything it must read; `fraction_of_floor` stays the weights-only figure.
action_ms = prefill + all decode steps. Prefill against the machine's compute: the GEMM peak is
measured in the same run at the prefill's MLP shape (prompt x hidden x intermediate, the
same thread count, best of several): fp32 (torch.mm), bf16 (torch.mm in bfloat16) and int8
(the faster of torch._int_mm and onnxruntime's u8 x s8 MatMulInteger);
`prefill_fraction_of_peak` = (useful prefill FLOPs / prefill time) / the peak of the precision's
compute (the onnxruntime graphs: int8, their activations are int8; int4: bf16; int8 torch:
fp32), useful FLOPs = 2 x prompt x decoder-layer linear weights + causal attention
(2 x prompt^2 x hidden per layer) + one position of lm_head. `--prefill` chooses how the
onnxruntime decoder graphs run the prompt (qail_ros.quant.ort_llama: 'int8', a second graph of
int8 GEMMs with per-token int8 activations, the default on CPU for per-channel codes, or
'nbits', the decode graph's MatMulNBits); `prefill_mode` says what ran. Memory
per precision: model_mb = bytes the model holds (parameters, buffers, the kernels' packed
weights and caches); rss_growth_mb = resident-set growth while it was built from the FP32
model and run (includes transient copies and the KV cache; for int4_ort also onnxruntime's
own copies of the weights, which model_mb does not see: model_mb counts the bytes the
MatMulNBits sessions were given).

JSON: `int4_ms_per_token`, `int4_floor_ms`, `int4_fraction_of_floor`, `int4_speedup_vs_fp32`,
`int4_prefill_ms`, `int4_action_ms` are the fastest INT4 path of the run (`int4_path` names
it: int4_ort, the graph, in every run so far); likewise `int8_*`. Per path: `int4_ort_*`,
`int4_ort_layers_*`, `int8_ort_*`, and `int4_torch_*` / `int8_torch_*` for torch's kernels
(precisions `int4` / `int8` in the table; the per-precision dicts such as `action_ms` use the
table's names). Runs before 2026-11-30 wrote torch's path as `int4_*` and the fastest as
`int4_best_*`.

`--policy [PATH]` also times whole actions through the node's code path,
`OpenVLAPolicy.predict` on an OpenVLA checkpoint (default: the shipped tiny random model): a
640x480 frame resized for the towers, towers + projector, prefill, `action_dim` greedy decode
steps (the policy's own path: the onnxruntime decoder graph for int4_ort, transformers'
forward otherwise), un-normalisation; for each requested
precision the policy has (fp32, bf16, int4, int4_ort; RTN for the INT4 ones, per channel or
`--group-size`; the tiny model's layers halve a group until it divides them). JSON
key `policy`: {path, parameters, action_ms {precision: median ms}, inference_ms, load_s,
group_size (None for float precisions)}.
On the tiny model these times are Python overhead, not kernels; point PATH at a real
checkpoint for the real cost.
"""
from __future__ import annotations

import argparse
import gc
import statistics
import time

HELP = 'decode latency per token of an OpenVLA-layout Llama: FP32/BF16/INT8/INT4 vs bandwidth'

PRECISIONS = ('fp32', 'bf16', 'int8', 'int8_ort', 'int4', 'int4_ort', 'int4_ort_layers')
DEFAULT_PRECISIONS = ('fp32', 'bf16', 'int8_ort', 'int4', 'int4_ort')
INT4_PATHS = ('int4', 'int4_ort', 'int4_ort_layers')
INT8_PATHS = ('int8', 'int8_ort')
#: JSON names of the torch kernels' per-path keys: `int4_*` / `int8_*` are the fastest path
JSON_NAMES = {'int4': 'int4_torch', 'int8': 'int8_torch'}
#: the precisions OpenVLAPolicy has (--policy)
POLICY_PRECISIONS = ('fp32', 'bf16', 'int4', 'int4_ort')
POLICY_INSTRUCTION = 'pick up the red block'
#: (hidden, intermediate, layers, heads): ~1.0 B parameters / ~45 M parameters
LAYOUTS = {'default': (2048, 5504, 16, 16), 'small': (512, 1408, 4, 8)}
VOCAB = 32064
ATTENTIONS = ('sdpa', 'gemv')


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('--small', action='store_true',
                        help='a ~45 M-parameter backbone for quick runs (default ~1 B)')
    parser.add_argument('--threads', type=int, default=1, help='torch threads (default 1)')
    parser.add_argument('--tokens', type=int, default=7,
                        help='decode steps per action (OpenVLA: 7)')
    parser.add_argument('--prompt', type=int, default=0,
                        help='prefill tokens (default: 276 = 256 patches + 20; --small: 64)')
    parser.add_argument('--repeats', type=int, default=3, help='actions timed per precision')
    parser.add_argument('--group-size', type=int, default=0,
                        help='weight-only quantization of the INT4/INT8 precisions: 0 = per '
                        'channel (default: what train-vla writes, the paper\'s channel-wise '
                        'INT4), or a group size such as 128')
    parser.add_argument('--precisions', default=','.join(DEFAULT_PRECISIONS),
                        help=f'comma-separated subset of {",".join(PRECISIONS)} (default '
                        '%(default)s)')
    parser.add_argument('--cache', choices=('dynamic', 'static'), default='dynamic',
                        help='KV cache: transformers DynamicCache (grows by concatenation) or '
                        'a preallocated StaticCache (default %(default)s)')
    parser.add_argument('--attention', choices=ATTENTIONS, default='sdpa',
                        help='decode-step attention: torch SDPA or the GEMV form (default '
                        '%(default)s)')
    parser.add_argument('--policy', nargs='?', const='models/openvla-tiny', default=None,
                        metavar='PATH',
                        help='also time whole actions through OpenVLAPolicy.predict on this '
                        'OpenVLA checkpoint (default when given without PATH: the shipped '
                        'tiny model)')
    parser.add_argument('--unnorm-key', default=None,
                        help="--policy: the data set key (default: the checkpoint's first)")
    parser.add_argument('--prefill', choices=('auto', 'int8', 'nbits'), default='auto',
                        help='how the onnxruntime decoder graphs run the prompt: int8 GEMMs '
                        '(per-token int8 activations; auto = where the codes allow) or '
                        'MatMulNBits (default %(default)s)')


def measure_bandwidth_gbps(mbytes: int = 512, repeats: int = 5) -> float:
    """Read bandwidth: the best of `repeats` reductions (sum and amax, torch's threads) over
    a float32 buffer of `mbytes` MB."""
    import torch
    x = torch.ones(mbytes * (1 << 20) // 4, dtype=torch.float32)
    best = float('inf')
    for reduce in (torch.sum, torch.amax):
        reduce(x)
        for _ in range(repeats):
            t0 = time.perf_counter()
            reduce(x)
            best = min(best, time.perf_counter() - t0)
    return x.numel() * 4 / best / 1e9


def measure_gemm_peak_gflops(m: int, k: int, n: int, repeats: int = 5) -> dict[str, float]:
    """GFLOP/s of the best of `repeats` (m, k) x (k, n) GEMMs at torch's thread count: fp32
    and bf16 torch.mm; int8 the faster of torch._int_mm and onnxruntime's u8 x s8
    MatMulInteger (MLAS, the kernel family of the onnxruntime graphs). Wall-clock rates, and
    under 'cpu' the same from process CPU time (what a loaded machine does not inflate)."""
    import torch
    flops = 2.0 * m * k * n
    cpu: dict[str, float] = {}

    def best(fn, name: str) -> float:
        fn()
        t = c = float('inf')
        for _ in range(repeats):
            c0, t0 = time.process_time(), time.perf_counter()
            fn()
            t = min(t, time.perf_counter() - t0)
            c = min(c, time.process_time() - c0)
        cpu[name] = flops / max(c, 1e-9) / 1e9
        return flops / t / 1e9
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(m, k, generator=g), torch.randn(k, n, generator=g)
    out = {'fp32': best(lambda: torch.mm(a, b), 'fp32')}
    a16, b16 = a.bfloat16(), b.bfloat16()
    out['bf16'] = best(lambda: torch.mm(a16, b16), 'bf16')
    ai = torch.randint(-127, 128, (m, k), dtype=torch.int8, generator=g)
    bi = torch.randint(-127, 128, (k, n), dtype=torch.int8, generator=g)
    out['int8_torch'] = best(lambda: torch._int_mm(ai, bi), 'int8_torch')
    try:
        import numpy as np
        import onnxruntime as ort
        from onnx import TensorProto, helper, numpy_helper
        graph = helper.make_graph(
            [helper.make_node('MatMulInteger', ['a', 'b', 'za'], ['y'])], 'gemm',
            [helper.make_tensor_value_info('a', TensorProto.UINT8, [m, k])],
            [helper.make_tensor_value_info('y', TensorProto.INT32, [m, n])],
            initializer=[numpy_helper.from_array(bi.numpy(), 'b'),
                         numpy_helper.from_array(np.uint8(128), 'za')])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid('', 17)])
        model.ir_version = 8
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = torch.get_num_threads()
        opts.inter_op_num_threads = 1
        sess = ort.InferenceSession(model.SerializeToString(), opts,
                                    providers=['CPUExecutionProvider'])
        feed = {'a': (ai.numpy().astype(np.int16) + 128).astype(np.uint8)}
        out['int8_ort'] = best(lambda: sess.run(None, feed), 'int8_ort')
    except ImportError:
        pass
    out['int8'] = max(v for key, v in out.items() if key.startswith('int8_'))
    cpu['int8'] = max(v for key, v in cpu.items() if key.startswith('int8_'))
    out['cpu'] = cpu
    return out


#: the GEMM peak each precision's prefill computes at (its activations' type)
PEAK_OF = {'fp32': 'fp32', 'bf16': 'bf16', 'int8': 'fp32', 'int4': 'bf16', 'int8_ort': 'int8',
           'int4_ort': 'int8', 'int4_ort_layers': 'int8'}


def prefill_flops(config, prompt: int) -> float:
    """Useful FLOPs of a prefill: decoder-layer linears over every prompt position, causal
    attention, and lm_head at the last position only (the one greedy decoding reads)."""
    h, inter = int(config.hidden_size), int(config.intermediate_size)
    heads = int(config.num_attention_heads)
    kv = int(getattr(config, 'num_key_value_heads', None) or heads)
    head_dim = int(getattr(config, 'head_dim', None) or h // heads)
    per_layer = h * heads * head_dim + 2 * h * kv * head_dim + heads * head_dim * h + 3 * h * inter
    layers = int(config.num_hidden_layers)
    attention = 2.0 * prompt * prompt * heads * head_dim        # QK^T + PV, causal half each
    return layers * (2.0 * prompt * per_layer + attention) + 2.0 * h * int(config.vocab_size)


def _rss_mb() -> float:
    import psutil
    return psutil.Process().memory_info().rss / 2**20


def _gemv_attention(module, query, key, value, attention_mask, dropout: float = 0.0,
                    scaling: float | None = None, **kwargs):
    """transformers attention function: one query (decode) as q.K^T and sum(p * V).

    Same maths as SDPA (softmax in float32); anything else (prefill, grouped KV heads,
    dropout) goes to transformers' SDPA function unchanged.
    """
    import torch
    from transformers.integrations.sdpa_attention import sdpa_attention_forward
    if query.shape[2] != 1 or getattr(module, 'num_key_value_groups', 1) != 1 or (
            dropout and module.training):
        return sdpa_attention_forward(module, query, key, value, attention_mask,
                                      dropout=dropout, scaling=scaling, **kwargs)
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    s = torch.matmul(key, query.transpose(-1, -2)).transpose(-1, -2) * scale   # (b, h, 1, L)
    if attention_mask is not None:
        m = attention_mask[..., :key.shape[-2]]
        s = s.masked_fill(~m, float('-inf')) if m.dtype == torch.bool else s + m
    p = torch.softmax(s, -1, dtype=torch.float32).to(value.dtype)
    out = (value * p.transpose(-1, -2)).sum(-2, keepdim=True)                   # (b, h, 1, d)
    return out.transpose(1, 2).contiguous(), None


def _attn_implementation(attention: str) -> str:
    """transformers' name for `attention`, registering the GEMV form on first use."""
    if attention == 'sdpa':
        return 'sdpa'
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask
    AttentionInterface.register('qail_gemv', _gemv_attention)
    AttentionMaskInterface.register('qail_gemv', sdpa_mask)
    return 'qail_gemv'


def build_fp32(hidden: int, inter: int, layers: int, heads: int, seed: int = 0,
               attention: str = 'sdpa'):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM
    cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=hidden, intermediate_size=inter,
                      num_hidden_layers=layers, num_attention_heads=heads,
                      num_key_value_heads=heads, max_position_embeddings=2048)
    cfg._attn_implementation = _attn_implementation(attention)
    torch.manual_seed(seed)
    with torch.no_grad():
        model = LlamaForCausalLM(cfg)
        for p in model.parameters():       # cheap seeded init (transformers' is slow)
            if p.dim() > 1:
                p.normal_(0.0, 0.02)
    return model.eval()


def kv_bytes_per_token(config, prompt: int, tokens: int, dtype_bytes: int) -> float:
    """KV-cache bytes attention reads per decode step, averaged over the `tokens` steps (step
    j attends to prompt + j positions of keys and values in every layer)."""
    heads = int(config.num_attention_heads)
    kv_dim = int(getattr(config, 'num_key_value_heads', None) or heads) * (
        int(getattr(config, 'head_dim', None) or config.hidden_size // heads))
    mean_len = prompt + (tokens + 1) / 2
    return 2 * int(config.num_hidden_layers) * kv_dim * mean_len * dtype_bytes


def linear_weight_bytes(model, precision: str) -> int:
    """Bytes of linear weights (+ scales) read per decoded token, by precision."""
    from torch import nn
    if _is_decoder(model):
        return model.weight_bytes
    total = 0
    for m in model.modules():
        if hasattr(m, 'weight_bytes'):             # onnxruntime MatMulNBits layers
            total += m.weight_bytes
            continue
        n, k = getattr(m, 'out_features', None), getattr(m, 'in_features', None)
        if n is None or not (isinstance(m, nn.Linear) or 'WeightOnly' in type(m).__name__):
            continue
        if precision == 'fp32':
            total += n * k * 4
        elif precision == 'bf16':
            total += n * k * 2
        elif precision == 'int8':
            total += n * k + n * 4
        elif precision == 'int4_ort_layers':       # a linear left in float32
            total += n * k * 4
        else:       # codes + a bf16 (scale, zero) pair per group of torch's int4 kernel
            group = getattr(m, 'kernel_group', 0) or getattr(m, 'group_size', 0) or 128
            total += n * k // 2 + n * (k // group) * 2 * 2
    return total


def _is_decoder(model) -> bool:
    return type(model).__name__ == 'OrtLlamaDecoder'


def model_bytes(model) -> int:
    """Bytes held by the model: parameters, buffers and the int kernels' packed copies."""
    import torch
    if _is_decoder(model):      # the weights handed to onnxruntime + embeddings + KV cache
        emb = model.embed_tokens.weight
        return (model.weight_bytes + getattr(model, 'prefill_weight_bytes', 0)
                + emb.numel() * emb.element_size() + model.cache_bytes)
    seen, total = set(), 0

    def add(t):
        nonlocal total
        if isinstance(t, torch.Tensor) and t.data_ptr() not in seen:
            seen.add(t.data_ptr())
            total += t.numel() * t.element_size()
    for t in list(model.parameters()) + list(model.buffers()):
        add(t)
    for m in model.modules():
        wb = getattr(m, 'weight_bytes', None)      # weights handed to onnxruntime sessions
        if wb is not None:
            total += wb
        for attr in ('_packed', '_kscale'):
            add(getattr(m, attr, None))
        for cache in ('_sz', '_dequant'):
            c = getattr(m, cache, None)
            if isinstance(c, dict):
                for t in c.values():
                    add(t)
            else:
                add(c)
    return total


def weight_only(bits: int, group_size: int = 0):
    """The RTN weight-only config of the integer precisions: per channel when `group_size`
    is 0, else group-wise."""
    from qail_ros import quant
    if group_size:
        return quant.WeightOnlyRTN(bits=bits, granularity='group', group_size=group_size)
    return quant.WeightOnlyRTN(bits=bits, granularity='per_channel')


def make_precision(fp32_model, precision: str, threads: int = 1, capacity: int = 320,
                   group_size: int = 0, prefill: str = 'auto'):
    """(model, activation dtype) at `precision`, from a deep copy of `fp32_model`, integer
    weights RTN per channel (`group_size` 0) or group-wise; 'int4_ort' gives an
    OrtLlamaDecoder (KV cache for `capacity` positions)."""
    import copy

    import torch
    from qail_ros import quant
    model = copy.deepcopy(fp32_model)
    if precision == 'bf16':
        return model.to(torch.bfloat16), torch.bfloat16
    if precision == 'int8':
        quant.quantize_(model, weight_only(8))      # torch's int8 kernel: per channel only
        quant.convert_to_integer(model, int8_weight_kernel=True)
        return model, torch.float32
    if precision == 'int4':
        quant.quantize_(model, weight_only(4, group_size))
        quant.convert_to_integer(model, int4_compute_dtype=torch.bfloat16)
        return model.to(torch.bfloat16), torch.bfloat16   # norms / embeddings in bf16 too
    if precision in ('int4_ort', 'int8_ort'):
        from torch import nn

        from qail_ros.quant.ort_llama import OrtLlamaDecoder
        bits = 8 if precision == 'int8_ort' else 4
        quant.quantize_(model, weight_only(bits, group_size))
        decoder = OrtLlamaDecoder(model, threads=threads, accuracy_level=4, capacity=capacity,
                                  prefill=prefill)
        model.model.layers = nn.ModuleList()    # as the policy does: the graph owns them
        model.model.norm = nn.Identity()
        model.lm_head = nn.Identity()
        return decoder, torch.float32
    if precision == 'int4_ort_layers':
        from qail_ros.quant.ort_int4 import convert_to_ort_int4
        quant.quantize_(model, weight_only(4, group_size))
        convert_to_ort_int4(model, threads=threads, accuracy_level=4)
        return model, torch.float32
    return model, torch.float32


def time_actions(model, dtype, prompt: int, tokens: int, repeats: int,
                 cache: str = 'dynamic') -> dict[str, float]:
    """Prefill `prompt` embeddings then `tokens` greedy decode steps; medians in ms."""
    import torch
    g = torch.Generator().manual_seed(1)
    if _is_decoder(model):      # OrtLlamaDecoder: embedding lookup + one graph run per step
        embeds = torch.randn(1, prompt, model.hidden, generator=g) * 0.02

        def start():
            model.reset()
            return model.step(embeds)

        def step(logits):
            return model.step(model.embed(logits[0].argmax(-1)))
        return _time_loop(start, step, tokens, repeats)
    embeds = (torch.randn(1, prompt, model.config.hidden_size, generator=g) * 0.02).to(dtype)
    static = None
    if cache == 'static':
        from transformers import StaticCache
        static = StaticCache(config=model.config, max_cache_len=prompt + tokens)

    def start():
        if static is not None:
            static.reset()
        return model(inputs_embeds=embeds, past_key_values=static, use_cache=True)

    def step(out):
        tok = out.logits[:, -1].argmax(-1, keepdim=True)
        return model(input_ids=tok, past_key_values=out.past_key_values, use_cache=True)
    with torch.no_grad():
        return _time_loop(start, step, tokens, repeats)


def _time_loop(start, step, tokens: int, repeats: int) -> dict[str, float]:
    """`repeats` actions (after one warm-up): start() = the prefill, then `tokens` times
    state = step(state); medians in ms (per-token wall and thread CPU time; prefill and
    action also in process CPU time, which time slices taken by other processes do not
    inflate)."""
    prefill, per_token, action, cpu_token = [], [], [], []
    cpu_prefill, cpu_action = [], []
    for r in range(repeats + 1):                 # the first action is warm-up
        p0 = time.process_time()
        t0 = time.perf_counter()
        state = start()
        t1 = time.perf_counter()
        p1 = time.process_time()
        steps = []
        for _ in range(tokens):
            s0, c0 = time.perf_counter(), time.thread_time()
            state = step(state)
            steps.append(time.perf_counter() - s0)
            if r:
                cpu_token.append((time.thread_time() - c0) * 1e3)
        t2 = time.perf_counter()
        p2 = time.process_time()
        if r:
            prefill.append((t1 - t0) * 1e3)
            per_token += [s * 1e3 for s in steps]
            action.append((t2 - t0) * 1e3)
            cpu_prefill.append((p1 - p0) * 1e3)
            cpu_action.append((p2 - p0) * 1e3)
    return {'prefill_ms': statistics.median(prefill),
            'ms_per_token': statistics.median(per_token),
            'action_ms': statistics.median(action),
            'cpu_ms_per_token': statistics.median(cpu_token),
            'cpu_prefill_ms': statistics.median(cpu_prefill),
            'cpu_action_ms': statistics.median(cpu_action)}


def time_policy(path: str, precision: str, repeats: int, threads: int = 1,
                unnorm_key: str | None = None, group_size: int = 0) -> dict:
    """Load an OpenVLA checkpoint at `precision` (INT4: RTN, per channel when `group_size`
    is 0, else group-wise) and time OpenVLAPolicy.predict on a 640x480 frame; medians in ms
    over `repeats` after a warm-up."""
    import numpy as np
    from qail_ros.nodes.vla_policy import resolve_model_path
    from qail_ros.openvla.config import read_config
    from qail_ros.openvla.policy import OpenVLAPolicy
    resolved = resolve_model_path(path)
    key = unnorm_key or next(iter(read_config(resolved).norm_stats))
    t0 = time.perf_counter()
    policy = OpenVLAPolicy.from_pretrained(resolved, precision=precision, unnorm_key=key,
                                           ort_threads=threads, int4_group_size=group_size)
    load_s = time.perf_counter() - t0
    frame = np.random.default_rng(0).integers(0, 256, (480, 640, 3), np.uint8)
    policy.predict(frame, POLICY_INSTRUCTION)                 # warm-up: first calls allocate
    action, inference = [], []
    for _ in range(max(int(repeats), 1)):
        t = time.perf_counter()
        r = policy.predict(frame, POLICY_INSTRUCTION)
        action.append((time.perf_counter() - t) * 1e3)
        inference.append(r.timing_ms['inference_ms'])
    return {'action_ms': statistics.median(action),
            'inference_ms': statistics.median(inference), 'load_s': load_s,
            'parameters': policy.num_parameters(), 'path': str(resolved),
            'precision': policy.precision,
            'group_size': policy.int4_details.get('group_size')}


def main(args: argparse.Namespace) -> int:
    import torch
    from qail_ros.report import emit_json, environment, table
    torch.set_num_threads(int(args.threads))
    cache = getattr(args, 'cache', 'dynamic')
    attention = getattr(args, 'attention', 'sdpa')
    precisions = [p.strip() for p in args.precisions.split(',') if p.strip()]
    bad = [p for p in precisions if p not in PRECISIONS]
    if bad:
        print(f'unknown precisions {bad}; choose from {list(PRECISIONS)}')
        return 2
    hidden, inter, layers, heads = LAYOUTS['small' if args.small else 'default']
    prompt = args.prompt or (64 if args.small else 276)
    group_size = int(getattr(args, 'group_size', 0) or 0)
    if group_size < 0:
        print(f'--group-size {group_size}: give 0 (per channel) or a positive group size')
        return 2
    quantization = f'group {group_size}' if group_size else 'per channel'
    probe_mb = 128 if args.small else 512
    bandwidth_before = measure_bandwidth_gbps(probe_mb)
    readings = [bandwidth_before]
    base_rss = _rss_mb()
    fp32 = build_fp32(hidden, inter, layers, heads, attention=attention)
    params = sum(p.numel() for p in fp32.parameters())
    print(f'Llama backbone (OpenVLA layout): {params / 1e6:.1f} M parameters, hidden {hidden}, '
          f'{layers} layers, vocab {VOCAB}; prefill {prompt} tokens, {args.tokens} decode '
          f'steps; {args.threads} thread(s); {cache} KV cache, {attention} attention (torch '
          f'paths); integer weights RTN {quantization}; read bandwidth '
          f'{bandwidth_before:.2f} GB/s', flush=True)
    results: dict[str, dict[str, float]] = {}
    prefill_modes: dict[str, str] = {}
    gemm_peak = measure_gemm_peak_gflops(prompt, hidden, inter,
                                         repeats=3 if args.small else 5)
    print('GEMM peak at the prefill MLP shape '
          f'({prompt} x {hidden} x {inter}): ' +
          ', '.join(f'{k} {v:.1f}' for k, v in gemm_peak.items() if k != 'cpu') +
          ' GFLOP/s (from CPU time: ' +
          ', '.join(f'{k} {v:.1f}' for k, v in gemm_peak['cpu'].items()) + ')', flush=True)
    pflops = prefill_flops(fp32.config, prompt)
    for precision in precisions:
        gc.collect()
        before = _rss_mb()
        model, dtype = make_precision(fp32, precision, int(args.threads),
                                      capacity=prompt + args.tokens, group_size=group_size,
                                      prefill=getattr(args, 'prefill', 'auto'))
        timing = time_actions(model, dtype, prompt, args.tokens, args.repeats, cache)
        if _is_decoder(model):
            prefill_modes[precision] = model.prefill
        kv_dtype_bytes = 2 if dtype == torch.bfloat16 else 4     # the int4_ort graph: float32
        timing.update(weight_bytes=linear_weight_bytes(model, precision),
                      kv_bytes=kv_bytes_per_token(fp32.config, prompt, args.tokens,
                                                  kv_dtype_bytes),
                      model_mb=model_bytes(model) / 2**20,
                      rss_growth_mb=max(_rss_mb() - before, 0.0))
        results[precision] = timing
        del model
        gc.collect()
        readings.append(measure_bandwidth_gbps(probe_mb))     # after each precision
    del fp32
    gc.collect()
    # the median reading: this VM's reads swing (34.8-59.2 GB/s at two threads, one command)
    bandwidth = statistics.median(readings)
    for timing in results.values():
        wbytes, kvbytes = timing.pop('weight_bytes'), timing.pop('kv_bytes')
        floor_ms = wbytes / (bandwidth * 1e9) * 1e3
        kv_floor_ms = (wbytes + kvbytes) / (bandwidth * 1e9) * 1e3
        timing.update(weight_mb=wbytes / 2**20, floor_ms=floor_ms,
                      fraction_of_floor=floor_ms / timing['ms_per_token'],
                      kv_mb=kvbytes / 2**20, floor_with_kv_ms=kv_floor_ms,
                      fraction_of_floor_with_kv=kv_floor_ms / timing['ms_per_token'],
                      effective_gbps=wbytes / timing['ms_per_token'] / 1e6)
    for p, timing in results.items():
        peak_key = PEAK_OF.get(p, 'fp32')
        timing['prefill_gflops'] = pflops / (timing['prefill_ms'] / 1e3) / 1e9
        timing['prefill_fraction_of_peak'] = timing['prefill_gflops'] / gemm_peak[peak_key]
        timing['cpu_prefill_fraction_of_peak'] = (
            pflops / (timing['cpu_prefill_ms'] / 1e3) / 1e9 / gemm_peak['cpu'][peak_key])
        timing['prefill_peak'] = peak_key
    # a decode step that streams its weights faster than the reductions read memory shows
    # the reductions under-read the machine: the fastest such rate is a stricter peak
    peak = max([bandwidth] + [r['effective_gbps'] for r in results.values()])
    for timing in results.values():
        timing['fraction_of_peak'] = timing['effective_gbps'] / peak
    print(f'read bandwidth readings {", ".join(f"{r:.1f}" for r in readings)} GB/s: the '
          f'floor uses their median {bandwidth:.2f}; fastest weight '
          f'stream of a decode step {peak:.2f} GB/s', flush=True)
    policy_path = getattr(args, 'policy', None)
    policy: dict[str, dict] = {}
    if policy_path:
        for precision in (p for p in precisions if p in POLICY_PRECISIONS):
            gc.collect()
            policy[precision] = time_policy(policy_path, precision, args.repeats,
                                            int(args.threads), getattr(args, 'unnorm_key', None),
                                            group_size)
    fp = results.get('fp32', {}).get('ms_per_token')
    fp_action = results.get('fp32', {}).get('action_ms')
    table('decode latency per token (median)',
          ['precision', 'ms/token', 'cpu ms/token', 'floor ms', 'of floor', 'of floor+KV',
           'GB/s', 'prefill ms', 'of peak', 'action ms', 'action vs fp32', 'weights MB',
           'KV MB', 'model MB', 'vs fp32'],
          [[p, r['ms_per_token'], r['cpu_ms_per_token'], r['floor_ms'], r['fraction_of_floor'],
            r['fraction_of_floor_with_kv'], r['effective_gbps'], r['prefill_ms'],
            r['prefill_fraction_of_peak'], r['action_ms'],
            (fp_action / r['action_ms']) if fp_action else float('nan'), r['weight_mb'],
            r['kv_mb'], r['model_mb'],
            (fp / r['ms_per_token']) if fp else float('nan')] for p, r in results.items()])
    if prefill_modes:
        print('prefill of the onnxruntime graphs: ' +
              ', '.join(f'{p} {m}' for p, m in prefill_modes.items()))
    if policy:
        first = next(iter(policy.values()))
        n_params = max(r['parameters'] for r in policy.values())   # float: all still torch's
        fp_action = policy.get('fp32', {}).get('action_ms')
        table(f'whole action through OpenVLAPolicy.predict ({first["path"]}, '
              f'{n_params / 1e6:.2f} M parameters; median)',
              ['precision', 'action ms', 'inference ms', 'load s', 'vs fp32'],
              [[p, r['action_ms'], r['inference_ms'], r['load_s'],
                (fp_action / r['action_ms']) if fp_action else float('nan')]
               for p, r in policy.items()])
    if args.json:
        out: dict = {'params': params, 'bandwidth_gbps': bandwidth,
                     'bandwidth_readings_gbps': readings,
                     'small': bool(args.small),
                     'threads': args.threads, 'prompt_tokens': prompt, 'cache': cache,
                     'attention': attention, 'decode_tokens': args.tokens,
                     'group_size': group_size}
        for p, r in results.items():
            out[f'{JSON_NAMES.get(p, p)}_ms_per_token'] = r['ms_per_token']
        for p in INT4_PATHS + INT8_PATHS:
            if p in results:
                key = JSON_NAMES.get(p, p)
                out[f'{key}_floor_ms'] = results[p]['floor_ms']
                out[f'{key}_fraction_of_floor'] = results[p]['fraction_of_floor']
                if fp:
                    out[f'{key}_speedup_vs_fp32'] = fp / results[p]['ms_per_token']
        # the int4_* / int8_* keys: the fastest path of that width measured in this run
        for bits, paths in (('int4', INT4_PATHS), ('int8', INT8_PATHS)):
            measured = [p for p in paths if p in results]
            if not measured:
                continue
            best = min(measured, key=lambda p: results[p]['ms_per_token'])
            out[f'{bits}_path'] = best
            for key in ('ms_per_token', 'floor_ms', 'fraction_of_floor', 'floor_with_kv_ms',
                        'fraction_of_floor_with_kv', 'prefill_ms', 'action_ms'):
                out[f'{bits}_{key}'] = results[best][key]
            if fp:
                out[f'{bits}_speedup_vs_fp32'] = fp / results[best]['ms_per_token']
        out['action_ms'] = {p: r['action_ms'] for p, r in results.items()}
        if fp_action:
            out['action_speedup_vs_fp32'] = {
                p: fp_action / r['action_ms'] for p, r in results.items()}
            for bits in ('int4', 'int8'):
                if f'{bits}_action_ms' in out:
                    out[f'{bits}_action_speedup_vs_fp32'] = fp_action / out[f'{bits}_action_ms']
        out['gemm_peak_gflops'] = gemm_peak
        out['gemm_peak_shape'] = [prompt, hidden, inter]
        out['prefill_flops'] = pflops
        out['prefill_gflops'] = {p: r['prefill_gflops'] for p, r in results.items()}
        out['prefill_fraction_of_peak'] = {p: r['prefill_fraction_of_peak']
                                           for p, r in results.items()}
        out['prefill_peak'] = {p: r['prefill_peak'] for p, r in results.items()}
        out['cpu_prefill_fraction_of_peak'] = {p: r['cpu_prefill_fraction_of_peak']
                                               for p, r in results.items()}
        out['prefill_mode'] = prefill_modes
        out['prefill_ms'] = {p: r['prefill_ms'] for p, r in results.items()}
        out['floor_ms'] = {p: r['floor_ms'] for p, r in results.items()}
        out['fraction_of_floor'] = {p: r['fraction_of_floor'] for p, r in results.items()}
        out['kv_mb'] = {p: r['kv_mb'] for p, r in results.items()}
        out['fraction_of_floor_with_kv'] = {p: r['fraction_of_floor_with_kv']
                                            for p, r in results.items()}
        out['model_mb'] = {p: r['model_mb'] for p, r in results.items()}
        out['rss_growth_mb'] = {p: r['rss_growth_mb'] for p, r in results.items()}
        out['weight_mb'] = {p: r['weight_mb'] for p, r in results.items()}
        # CPU time of the calling thread per decode step (medians): unlike wall time it does not
        # count time slices taken by other processes (memory-bandwidth contention still counts);
        # it covers the calling thread only, i.e. all the work at --threads 1
        out['cpu_ms_per_token'] = {p: r['cpu_ms_per_token'] for p, r in results.items()}
        # process CPU time of the prefill and of the whole action (all threads of this
        # process): at --threads 1 the work itself, robust to a loaded machine
        out['cpu_prefill_ms'] = {p: r['cpu_prefill_ms'] for p, r in results.items()}
        out['cpu_action_ms'] = {p: r['cpu_action_ms'] for p, r in results.items()}
        if 'fp32' in results:
            out['cpu_action_speedup_vs_fp32'] = {
                p: results['fp32']['cpu_action_ms'] / r['cpu_action_ms']
                for p, r in results.items()}
        out['cpu_fraction_of_floor'] = {p: r['floor_ms'] / r['cpu_ms_per_token']
                                        for p, r in results.items()}
        # weight bytes / ms per token, and that against max(bandwidth, the fastest of them)
        out['effective_gbps'] = {p: r['effective_gbps'] for p, r in results.items()}
        out['peak_observed_gbps'] = peak
        out['fraction_of_peak'] = {p: r['fraction_of_peak'] for p, r in results.items()}
        if policy:
            first = next(iter(policy.values()))
            out['policy'] = {'path': first['path'],
                             'parameters': max(r['parameters'] for r in policy.values()),
                             'instruction': POLICY_INSTRUCTION,
                             **{k: {p: r[k] for p, r in policy.items()}
                                for k in ('action_ms', 'inference_ms', 'load_s',
                                          'group_size')}}
        out['rss_before_models_mb'] = base_rss
        out['environment'] = environment()
        emit_json(out)
    return 0
