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

from qail_ros.openvla.decode_latency import (ATTENTIONS, DEFAULT_PRECISIONS, INT4_PATHS,
                                             INT8_PATHS, POLICY_INSTRUCTION, PRECISIONS)

HELP = 'decode latency per token of an OpenVLA-layout Llama: FP32/BF16/INT8/INT4 vs bandwidth'

#: JSON names of the torch kernels' per-path keys: `int4_*` / `int8_*` are the fastest path
JSON_NAMES = {'int4': 'int4_torch', 'int8': 'int8_torch'}


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


def main(args: argparse.Namespace) -> int:
    from qail_ros.report import emit_json, environment, table
    from qail_ros.openvla.decode_latency import run
    cache = getattr(args, 'cache', 'dynamic')
    attention = getattr(args, 'attention', 'sdpa')
    group_size = int(getattr(args, 'group_size', 0) or 0)
    try:
        r = run(small=bool(args.small), threads=int(args.threads), tokens=int(args.tokens),
                prompt=int(args.prompt or 0), repeats=int(args.repeats), group_size=group_size,
                precisions=[p.strip() for p in args.precisions.split(',') if p.strip()],
                cache=cache, attention=attention, prefill=getattr(args, 'prefill', 'auto'),
                policy_path=getattr(args, 'policy', None),
                unnorm_key=getattr(args, 'unnorm_key', None),
                progress=lambda line: print(line, flush=True))
    except ValueError as exc:
        print(exc)
        return 2
    results, policy, prefill_modes = r['results'], r['policy'], r['prefill_modes']
    params, bandwidth, readings, peak = (r['params'], r['bandwidth_gbps'], r['readings'],
                                         r['peak_gbps'])
    prompt, hidden, inter = r['prompt'], r['hidden'], r['inter']
    gemm_peak, pflops, base_rss = r['gemm_peak'], r['prefill_flops'], r['rss_before_models_mb']
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
