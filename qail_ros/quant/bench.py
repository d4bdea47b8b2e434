"""Kernel benchmark of the integer CPU path against float nn.Linear (`qail-ros bench quant`).

    measure([(4096, 4096), (2048, 2048)], batches=[1], runs=50) -> one row per case

Per shape (in_features x out_features) and batch size it times, in one run: FP32 and BF16
nn.Linear, int4 weight-only (torch's CPU int4 kernel, group 128, FP32 and BF16 activations),
int8 weight-only (torch._weight_int8pack_mm), W8A8 and W4A4 static quantization on
torch._int_mm (IntLinear), and the W4A4 fake-quant layer used in training. Median and p90 of
`runs` calls after warm-up. qail_ros.bench.quant parses the command line and prints the table.
"""
from __future__ import annotations

import statistics
import time
from typing import Any

__all__ = ['measure']


def _time(fn, x, runs: int) -> tuple[float, float]:
    for _ in range(max(3, runs // 10)):
        fn(x)
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn(x)
        times.append((time.perf_counter() - t0) * 1e3)
    times.sort()
    return statistics.median(times), times[min(len(times) - 1, int(0.9 * len(times)))]


def _cases(k: int, n: int):
    """(name, module, input dtype, weight bytes) per implementation."""
    import copy

    import torch
    from torch import nn

    from qail_ros import quant
    torch.manual_seed(0)
    fp = nn.Sequential(nn.Linear(k, n)).eval()
    calib = torch.randn(64, k)
    q4 = quant.quantize_(copy.deepcopy(fp), quant.WeightOnlyRTN(bits=4, granularity='group',
                                                                group_size=128))
    w4 = quant.convert_to_integer(copy.deepcopy(q4))
    w4_f32 = quant.convert_to_integer(copy.deepcopy(q4), int4_compute_dtype=None)
    q8 = quant.quantize_(copy.deepcopy(fp), quant.WeightOnlyRTN(bits=8))
    w8 = quant.convert_to_integer(copy.deepcopy(q8))
    w8k = quant.convert_to_integer(copy.deepcopy(q8), int8_weight_kernel=True)
    a8 = quant.convert_to_integer(quant.quantize_(copy.deepcopy(fp), quant.W8A8LSQ(),
                                                  calibration=calib))
    fake4 = quant.quantize_(copy.deepcopy(fp), quant.W4A4LSQ(), calibration=calib).eval()
    a4 = quant.convert_to_integer(copy.deepcopy(fake4))
    bf = copy.deepcopy(fp).to(torch.bfloat16)
    f32, b16 = torch.float32, torch.bfloat16
    return [
        ('fp32 nn.Linear', fp, f32, 4 * k * n),
        ('bf16 nn.Linear', bf, b16, 2 * k * n),
        ('int4 w-only g128 (bf16 compute)', w4, f32, k * n // 2),
        ('int4 w-only g128 (fp32 compute)', w4_f32, f32, k * n // 2),
        ('int4 w-only g128, bf16 in/out', w4, b16, k * n // 2),
        ('int8 w-only (dequant cache)', w8, f32, k * n),
        ('int8 w-only (_weight_int8pack_mm)', w8k, f32, k * n),
        ('W8A8 int8 (_int_mm)', a8, f32, k * n),
        ('W4A4 on int8 (_int_mm)', a4, f32, k * n),
        ('W4A4 fake quant (eval, cached codes)', fake4, f32, 8 * k * n),
    ]


def measure(shapes: list[tuple[int, int]], batches: list[int], runs: int = 50
            ) -> list[dict[str, Any]]:
    """One row per (shape, batch, implementation): median and p90 ms over `runs` calls after
    warm-up, speed-up vs FP32 nn.Linear, weight MiB. Runs on torch's current thread count."""
    import torch
    results: list[dict[str, Any]] = []
    for k, n in shapes:
        cases = _cases(k, n)
        for batch in batches:
            base = None
            for name, module, dtype, nbytes in cases:
                x = torch.randn(batch, k, dtype=dtype)
                with torch.inference_mode():
                    med, p90 = _time(module, x, runs)
                base = med if base is None else base
                results.append({'shape': [k, n], 'batch': batch, 'impl': name,
                                'median_ms': med, 'p90_ms': p90, 'speedup_vs_fp32': base / med,
                                'weight_mib': nbytes / 2 ** 20})
    return results
