"""Decode latency of a Llama backbone in the OpenVLA layout, per precision, against the machine's
memory bandwidth and GEMM peak: the pipeline behind `qail-ros bench decode` (which parses the
arguments, calls `run` and prints; its module docstring documents the method and every figure).

    result = run(small=True, precisions=['fp32', 'int4_ort'], threads=1)
    result['results']['int4_ort']['ms_per_token'], result['bandwidth_gbps']

The backbone is a random-weight transformers LlamaForCausalLM (OpenVLA-7B's vocabulary and
SiLU-MLP layout, scaled down: LAYOUTS). Each precision is the FP32 model quantized RTN (per
channel or group-wise) and made deployable by one `quant.deploy` call (BACKBONE_PRECISIONS:
torch's integer kernels, the onnxruntime decoder graph or one MatMulNBits session per linear),
the same verb OpenVLAPolicy's INT4 precisions use. `time_policy` times whole actions of an
OpenVLA checkpoint loaded through the engine registry.
"""
from __future__ import annotations

import gc
import statistics
import time
from typing import Any, Callable

PRECISIONS = ('fp32', 'bf16', 'int8', 'int8_ort', 'int4', 'int4_ort', 'int4_ort_layers')
DEFAULT_PRECISIONS = ('fp32', 'bf16', 'int8_ort', 'int4', 'int4_ort')
INT4_PATHS = ('int4', 'int4_ort', 'int4_ort_layers')
INT8_PATHS = ('int8', 'int8_ort')
#: the precisions OpenVLAPolicy has (time_policy)
POLICY_PRECISIONS = ('fp32', 'bf16', 'int4', 'int4_ort')
POLICY_INSTRUCTION = 'pick up the red block'
#: (hidden, intermediate, layers, heads): ~1.0 B parameters / ~45 M parameters
LAYOUTS = {'default': (2048, 5504, 16, 16), 'small': (512, 1408, 4, 8)}
VOCAB = 32064
ATTENTIONS = ('sdpa', 'gemv')


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


def gemv_attention(module, query, key, value, attention_mask, dropout: float = 0.0,
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
    AttentionInterface.register('qail_gemv', gemv_attention)
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


#: backbone precision -> (weight bits, quant.deploy target, deploy options); None: float
BACKBONE_PRECISIONS: dict[str, tuple[int, str, dict] | None] = {
    'fp32': None, 'bf16': None,
    'int8': (8, 'integer', {'int8_weight_kernel': True}),
    'int8_ort': (8, 'ort', {}),
    'int4': (4, 'integer', {}),
    'int4_ort': (4, 'ort', {}),
    'int4_ort_layers': (4, 'ort-layers', {}),
}


def make_precision(fp32_model, precision: str, threads: int = 1, capacity: int = 320,
                   group_size: int = 0, prefill: str = 'auto'):
    """(model, activation dtype) at `precision`, from a deep copy of `fp32_model`: integer
    weights RTN per channel (`group_size` 0) or group-wise, made deployable by `quant.deploy`
    (BACKBONE_PRECISIONS); the 'ort' targets give an OrtLlamaDecoder (KV cache for `capacity`
    positions)."""
    import copy

    import torch
    from qail_ros import quant
    if precision not in BACKBONE_PRECISIONS:
        raise ValueError(f'precision {precision!r}: choose one of {list(BACKBONE_PRECISIONS)}')
    model = copy.deepcopy(fp32_model)
    if precision == 'bf16':
        return model.to(torch.bfloat16), torch.bfloat16
    spec = BACKBONE_PRECISIONS[precision]
    if spec is None:
        return model, torch.float32
    bits, target, options = spec
    groups = 0 if precision == 'int8' else group_size     # torch's int8 kernel: per channel
    deployed = quant.deploy(model, target, config=weight_only(bits, groups), threads=threads,
                            capacity=capacity, prefill=prefill, **options)
    if precision == 'int4':
        return deployed.to(torch.bfloat16), torch.bfloat16   # norms / embeddings in bf16 too
    return deployed, torch.float32


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
    """Load an OpenVLA checkpoint at `precision` through the engine registry (INT4: RTN, per
    channel when `group_size` is 0, else group-wise) and time whole predictions on a 640x480
    frame; medians in ms over `repeats` after a warm-up."""
    import numpy as np
    from qail_ros.engines import load_engine
    from qail_ros.openvla.config import read_config
    from qail_ros.share import resolve_share_path
    resolved = resolve_share_path(path)
    key = unnorm_key or next(iter(read_config(resolved).norm_stats))
    t0 = time.perf_counter()
    engine = load_engine(resolved, architecture='openvla', precision=precision,
                         threads=threads, options={'unnorm_key': key,
                                                   'int4_group_size': group_size})
    load_s = time.perf_counter() - t0
    frame = np.random.default_rng(0).integers(0, 256, (480, 640, 3), np.uint8)
    inputs = {'image': frame, 'instruction': POLICY_INSTRUCTION}
    engine.infer(inputs)                                      # warm-up: first calls allocate
    action, inference = [], []
    for _ in range(max(int(repeats), 1)):
        t = time.perf_counter()
        r = engine.infer(inputs)
        action.append((time.perf_counter() - t) * 1e3)
        inference.append(float(r['timing_ms'][1]))
    policy = engine.policy
    return {'action_ms': statistics.median(action),
            'inference_ms': statistics.median(inference), 'load_s': load_s,
            'parameters': policy.num_parameters(), 'path': str(resolved),
            'precision': policy.precision,
            'group_size': policy.int4_details.get('group_size')}


def run(*, small: bool = False, threads: int = 1, tokens: int = 7, prompt: int = 0,
        repeats: int = 3, group_size: int = 0, precisions: list[str] | None = None,
        cache: str = 'dynamic', attention: str = 'sdpa', prefill: str = 'auto',
        policy_path: str | None = None, unnorm_key: str | None = None,
        progress: Callable[[str], None] = lambda line: None) -> dict[str, Any]:
    """Measure every precision (see the module docstring); `progress` gets a line when the
    backbone is built, the GEMM peak and the bandwidth readings are known. Returns
    {params, hidden, inter, layers, prompt, bandwidth_gbps, readings, peak_gbps, gemm_peak,
    prefill_flops, results {precision: figures}, prefill_modes, policy {precision: figures},
    rss_before_models_mb}. ValueError for an unknown precision or a negative group size."""
    import torch
    precisions = list(precisions or DEFAULT_PRECISIONS)
    bad = [p for p in precisions if p not in PRECISIONS]
    if bad:
        raise ValueError(f'unknown precisions {bad}; choose from {list(PRECISIONS)}')
    if group_size < 0:
        raise ValueError(f'--group-size {group_size}: give 0 (per channel) or a positive group '
                         'size')
    torch.set_num_threads(int(threads))
    hidden, inter, layers, heads = LAYOUTS['small' if small else 'default']
    prompt = prompt or (64 if small else 276)
    quantization = f'group {group_size}' if group_size else 'per channel'
    probe_mb = 128 if small else 512
    bandwidth_before = measure_bandwidth_gbps(probe_mb)
    readings = [bandwidth_before]
    base_rss = _rss_mb()
    fp32 = build_fp32(hidden, inter, layers, heads, attention=attention)
    params = sum(p.numel() for p in fp32.parameters())
    progress(f'Llama backbone (OpenVLA layout): {params / 1e6:.1f} M parameters, hidden '
             f'{hidden}, {layers} layers, vocab {VOCAB}; prefill {prompt} tokens, {tokens} '
             f'decode steps; {threads} thread(s); {cache} KV cache, {attention} attention '
             f'(torch paths); integer weights RTN {quantization}; read bandwidth '
             f'{bandwidth_before:.2f} GB/s')
    results: dict[str, dict[str, float]] = {}
    prefill_modes: dict[str, str] = {}
    gemm_peak = measure_gemm_peak_gflops(prompt, hidden, inter, repeats=3 if small else 5)
    progress('GEMM peak at the prefill MLP shape '
             f'({prompt} x {hidden} x {inter}): ' +
             ', '.join(f'{k} {v:.1f}' for k, v in gemm_peak.items() if k != 'cpu') +
             ' GFLOP/s (from CPU time: ' +
             ', '.join(f'{k} {v:.1f}' for k, v in gemm_peak['cpu'].items()) + ')')
    pflops = prefill_flops(fp32.config, prompt)
    for precision in precisions:
        gc.collect()
        before = _rss_mb()
        model, dtype = make_precision(fp32, precision, int(threads), capacity=prompt + tokens,
                                      group_size=group_size, prefill=prefill)
        timing = time_actions(model, dtype, prompt, tokens, repeats, cache)
        if _is_decoder(model):
            prefill_modes[precision] = model.prefill
        kv_dtype_bytes = 2 if dtype == torch.bfloat16 else 4     # the int4_ort graph: float32
        timing.update(weight_bytes=linear_weight_bytes(model, precision),
                      kv_bytes=kv_bytes_per_token(fp32.config, prompt, tokens,
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
    progress(f'read bandwidth readings {", ".join(f"{r:.1f}" for r in readings)} GB/s: the '
             f'floor uses their median {bandwidth:.2f}; fastest weight '
             f'stream of a decode step {peak:.2f} GB/s')
    policy: dict[str, dict] = {}
    if policy_path:
        for precision in (p for p in precisions if p in POLICY_PRECISIONS):
            gc.collect()
            policy[precision] = time_policy(policy_path, precision, repeats, int(threads),
                                            unnorm_key, group_size)
    return {'params': params, 'hidden': hidden, 'inter': inter, 'layers': layers,
            'prompt': prompt, 'bandwidth_gbps': bandwidth, 'readings': readings,
            'peak_gbps': peak, 'gemm_peak': gemm_peak, 'prefill_flops': pflops,
            'results': results, 'prefill_modes': prefill_modes, 'policy': policy,
            'rss_before_models_mb': base_rss}
