"""OrtLlamaDecoder: a whole INT4 Llama decoder as one onnxruntime graph with an in-place KV
cache, against transformers' forward of the same fake-quantized model."""
import copy

import numpy as np
import pytest

torch = pytest.importorskip('torch')
pytest.importorskip('transformers', reason='the Llama reference needs transformers')
ort_int4 = pytest.importorskip('qail_ros.quant.ort_int4')
if not ort_int4.ort_available():
    pytest.skip('onnxruntime / onnx not installed', allow_module_level=True)

from qail_ros import quant  # noqa: E402
from qail_ros.quant.ort_int4 import OrtInt4Error  # noqa: E402
from qail_ros.quant.ort_llama import OrtLlamaDecoder  # noqa: E402

HIDDEN, INTER = 128, 256


def _llama(kv_heads: int = 4, seed: int = 0, max_positions: int = 256):
    from transformers import LlamaConfig, LlamaForCausalLM
    cfg = LlamaConfig(vocab_size=512, hidden_size=HIDDEN, intermediate_size=INTER,
                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=kv_heads,
                      max_position_embeddings=max_positions, rms_norm_eps=1e-5)
    cfg._attn_implementation = 'sdpa'
    torch.manual_seed(seed)
    model = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if 'norm' in name:
                p.uniform_(0.5, 1.5)              # non-trivial norm weights
            else:
                p.normal_(0.0, 0.05)
    return model


def _rtn(model, exclude_head: bool = True):
    kw = {'exclude': ['lm_head']} if exclude_head else {}
    quant.quantize_(model, quant.WeightOnlyRTN(bits=4, granularity='group', group_size=64,
                                               **kw))
    return model


def _greedy_reference(model, embeds, steps):
    """transformers' prefill + greedy decode: the last position's logits at every step."""
    out, logits = None, []
    with torch.no_grad():
        out = model(inputs_embeds=embeds, use_cache=True)
        for _ in range(steps):
            logits.append(out.logits[0, -1])
            tok = out.logits[:, -1].argmax(-1, keepdim=True)
            out = model(input_ids=tok, past_key_values=out.past_key_values, use_cache=True)
    return torch.stack(logits)


def _greedy_decoder(dec, embeds, steps):
    dec.reset()
    logits = [dec.step(embeds)[0]]
    for _ in range(steps - 1):
        logits.append(dec.step(dec.embed(logits[-1].argmax(-1)))[0])
    return torch.stack(logits)


@pytest.mark.parametrize('kv_heads', [4, 2])
def test_float_compute_matches_transformers_through_prefill_decode_and_cache_growth(kv_heads):
    """accuracy_level 1: same logits as the fake-quant model to float rounding, for full and
    grouped KV heads, while the cache grows past its first capacity (16 -> 64 -> 128)."""
    model = _rtn(_llama(kv_heads))
    dec = OrtLlamaDecoder(model, accuracy_level=1, capacity=16)
    assert dec.capacity == 64                 # rounded up to CAPACITY_STEP
    embeds = torch.randn(1, 40, HIDDEN, generator=torch.Generator().manual_seed(1))
    ref = _greedy_reference(model, embeds, 30)
    got = _greedy_decoder(dec, embeds, 30)
    assert dec.position == 69 and dec.capacity == 128
    assert float((got - ref).abs().max()) < 1e-4
    assert torch.equal(got.argmax(-1), ref.argmax(-1))


def test_int8_activations_stay_within_tolerance_and_reset_repeats_exactly():
    """accuracy_level 4 (int8 activations per block): logits within 3 % of their scale of the
    float reference (measured ~1.5 %); reset() starts a new sequence with identical results."""
    model = _rtn(_llama())
    dec = OrtLlamaDecoder(model)
    embeds = torch.randn(1, 24, HIDDEN, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ref = model(inputs_embeds=embeds).logits[0, -1]
    dec.reset()
    got = dec.step(embeds)[0]
    assert float((got - ref).abs().max()) < 0.03 * float(ref.abs().max())
    first = _greedy_decoder(dec, embeds, 5)
    assert torch.equal(first, _greedy_decoder(dec, embeds, 5))


def test_awq_input_scales_are_taken():
    """AWQ: a Div per projection, q/k/v as separate MatMulNBits concatenated; still the
    reference at float compute."""
    model = _llama()
    calib = [{'inputs_embeds': torch.randn(1, 16, HIDDEN,
                                           generator=torch.Generator().manual_seed(3))}]
    quant.quantize_(model, quant.Int4WeightOnlyAWQ(granularity='group', group_size=64,
                                                   exclude=['lm_head']), calibration=calib)
    assert model.model.layers[0].self_attn.q_proj.input_scale is not None
    dec = OrtLlamaDecoder(model, accuracy_level=1)
    embeds = torch.randn(1, 12, HIDDEN, generator=torch.Generator().manual_seed(4))
    ref = _greedy_reference(model, embeds, 6)
    assert float((_greedy_decoder(dec, embeds, 6) - ref).abs().max()) < 1e-4


def test_an_int4_lm_head_runs_on_matmulnbits():
    """lm_head quantized too: MatMulNBits instead of a float MatMul, still the reference at
    float compute, and weight_bytes counts the 4-bit head."""
    model = _rtn(_llama(), exclude_head=False)
    dec = OrtLlamaDecoder(model, accuracy_level=1)
    embeds = torch.randn(1, 12, HIDDEN, generator=torch.Generator().manual_seed(4))
    ref = _greedy_reference(model, embeds, 4)
    assert float((_greedy_decoder(dec, embeds, 4) - ref).abs().max()) < 1e-4
    float_head = OrtLlamaDecoder(_rtn(_llama()), accuracy_level=1)
    head_float_bytes = 512 * HIDDEN * 4
    assert float_head.weight_bytes - head_float_bytes < dec.weight_bytes < (
        float_head.weight_bytes)


def test_int8_weights_run_on_8_bit_matmulnbits():
    """WeightOnlyRTN(bits=8): 8-bit MatMulNBits storage (a byte per weight), reference logits
    at float compute, ~half the INT4 graph's bytes per weight."""
    model = _llama()
    quant.quantize_(model, quant.WeightOnlyRTN(bits=8, granularity='group', group_size=64,
                                               exclude=['lm_head']))
    dec = OrtLlamaDecoder(model, accuracy_level=1)
    embeds = torch.randn(1, 10, HIDDEN, generator=torch.Generator().manual_seed(6))
    ref = _greedy_reference(model, embeds, 4)
    assert float((_greedy_decoder(dec, embeds, 4) - ref).abs().max()) < 1e-4
    int4 = OrtLlamaDecoder(_rtn(_llama()), accuracy_level=1)
    head = 512 * HIDDEN * 4
    assert 1.7 < (dec.weight_bytes - head) / (int4.weight_bytes - head) < 2.0
    fast = OrtLlamaDecoder(model)                        # int8 activations too
    got = _greedy_decoder(fast, embeds, 1)[0]
    assert float((got - ref[0]).abs().max()) < 0.02 * float(ref[0].abs().max())


def test_large_graphs_go_through_external_data(monkeypatch):
    """Over EXTERNAL_DATA_BYTES the graph is written with external data (a 7B backbone is over
    protobuf's 2 GiB): same logits as the in-memory graph."""
    model = _rtn(_llama())
    embeds = torch.randn(1, 8, HIDDEN, generator=torch.Generator().manual_seed(5))
    a = OrtLlamaDecoder(model, accuracy_level=1)
    monkeypatch.setattr(OrtLlamaDecoder, 'EXTERNAL_DATA_BYTES', 0)
    b = OrtLlamaDecoder(model, accuracy_level=1)
    assert torch.equal(_greedy_decoder(a, embeds, 3), _greedy_decoder(b, embeds, 3))


def test_errors_name_the_fix():
    with pytest.raises(OrtInt4Error, match='not a Llama causal LM'):
        OrtLlamaDecoder(torch.nn.Linear(4, 4))
    with pytest.raises(OrtInt4Error, match='quantize_ the decoder'):
        OrtLlamaDecoder(_llama())                     # float layers
    model = _rtn(_llama(max_positions=128))
    dec = OrtLlamaDecoder(model, accuracy_level=1)
    with pytest.raises(OrtInt4Error, match=r'\(1, S, 128\) \(batch 1\)'):
        dec.step(torch.zeros(2, 3, HIDDEN))
    with pytest.raises(OrtInt4Error, match='max_position_embeddings 128: shorten'):
        dec.step(torch.zeros(1, 129, HIDDEN))
    dynamic = copy.deepcopy(model)
    dynamic.config.rope_parameters = {'rope_type': 'dynamic', 'factor': 2.0,
                                      'rope_theta': 10000.0}
    with pytest.raises(OrtInt4Error, match='per-layer sessions'):
        OrtLlamaDecoder(dynamic)


def test_weight_bytes_is_what_a_decode_step_reads():
    """Codes (half a byte per weight) + float32 scales per 64-block (+ zero points) of every
    decoder linear, plus the float32 lm_head."""
    model = _rtn(_llama())
    dec = OrtLlamaDecoder(model)
    per_layer = 4 * HIDDEN * HIDDEN + 3 * HIDDEN * INTER          # q k v o, gate up down
    codes = 2 * per_layer // 2
    scales = 2 * per_layer // 64 * 4
    head = 512 * HIDDEN * 4
    assert codes + scales + head <= dec.weight_bytes <= codes + scales * 5 // 4 + head
    assert dec.cache_bytes == 2 * 2 * 4 * dec.capacity * 32 * 4
    assert np.isfinite(dec.step(dec.embed([1, 2, 3])).numpy()).all()


def test_lora_adapters_run_inside_the_graph():
    """QLoRA adapters (LoRALinear over the INT4 layers; here on q and v only, so the fused
    q|k|v gets a block-diagonal B with zero columns for k) = transformers' forward."""
    from qail_ros.quant.lora import LoRALinear, add_lora
    model = _rtn(_llama())
    add_lora(model, rank=4, alpha=8, targets=r'.*\.(q_proj|v_proj|down_proj)')
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, LoRALinear):
                m.lora_b.normal_(0.0, 0.3, generator=torch.Generator().manual_seed(7))
    assert not isinstance(model.model.layers[0].self_attn.k_proj, LoRALinear)
    dec = OrtLlamaDecoder(model, accuracy_level=1)
    embeds = torch.randn(1, 10, HIDDEN, generator=torch.Generator().manual_seed(8))
    ref = _greedy_reference(model, embeds, 4)
    assert float((_greedy_decoder(dec, embeds, 4) - ref).abs().max()) < 1e-4
    # the adapters matter: without them the logits move
    plain = OrtLlamaDecoder(_rtn(_llama()), accuracy_level=1)
    assert float((_greedy_decoder(plain, embeds, 1)[0] - ref[0]).abs().max()) > 1e-2


def test_float16_kv_cache_is_the_graph_cuda_runs():
    """kv_dtype float16 (what device 'cuda' uses: onnxruntime's CUDA GroupQueryAttention is
    half precision) on the CPU: the same greedy tokens, logits within float16 rounding, half
    the cache bytes."""
    model = _rtn(_llama())
    embeds = torch.randn(1, 40, HIDDEN, generator=torch.Generator().manual_seed(9))
    ref = _greedy_reference(model, embeds, 12)
    half = OrtLlamaDecoder(model, accuracy_level=1, kv_dtype='float16', capacity=16)
    got = _greedy_decoder(half, embeds, 12)
    assert torch.equal(got.argmax(-1), ref.argmax(-1))
    assert float((got - ref).abs().max()) < 2e-3 * float(ref.abs().max()) + 1e-3
    full = OrtLlamaDecoder(model, accuracy_level=1, capacity=16)
    assert half.cache_bytes * 2 == full.cache_bytes


def test_cuda_device_needs_onnxruntime_gpu():
    from qail_ros.quant.ort_llama import cuda_available
    model = _rtn(_llama())
    with pytest.raises(OrtInt4Error, match="kv_dtype 'float16'"):
        OrtLlamaDecoder(model, device='cuda', kv_dtype='float32')
    with pytest.raises(OrtInt4Error, match="choose one of \\['cpu', 'cuda'\\]"):
        OrtLlamaDecoder(model, device='tpu')
    if cuda_available():
        dec = OrtLlamaDecoder(model, device='cuda', accuracy_level=4)
        embeds = torch.randn(1, 12, HIDDEN, generator=torch.Generator().manual_seed(10))
        with torch.no_grad():
            ref = model(inputs_embeds=embeds).logits[0, -1]
        got = dec.step(embeds)[0]
        assert float((got - ref).abs().max()) < 0.05 * float(ref.abs().max())
    else:
        with pytest.raises(OrtInt4Error, match='install onnxruntime-gpu'):
            OrtLlamaDecoder(model, device='cuda')


def test_int8_prefill_graph_for_per_channel_codes():
    """Per-channel INT4: the prompt runs through the int8-GEMM graph (per-token int8
    activations) sharing the KV cache with the 4-bit decode graph; logits within 3 % of the
    float reference's scale, decode steps after it agree with the all-MatMulNBits decoder."""
    model = _llama()
    quant.quantize_(model, quant.WeightOnlyRTN(bits=4, granularity='per_channel',
                                               exclude=['lm_head']))
    fast = OrtLlamaDecoder(model)
    plain = OrtLlamaDecoder(model, prefill='nbits')
    assert fast.prefill == 'int8' and fast.prefill_session is not None
    assert plain.prefill == 'nbits' and plain.prefill_session is None
    int8_per_layer = 4 * HIDDEN * HIDDEN + 2 * HIDDEN * INTER     # down_proj stays 4-bit
    down = HIDDEN * INTER // 2                                     # its 4-bit codes again
    head = 512 * HIDDEN * 4
    # int8 copy of the codes (a byte each) + float32 channel scales + the float head again
    low = 2 * (int8_per_layer + down) + head
    assert low <= fast.prefill_weight_bytes <= low * 1.1
    assert fast.weight_bytes == plain.weight_bytes
    embeds = torch.randn(1, 40, HIDDEN, generator=torch.Generator().manual_seed(8))
    with torch.no_grad():
        ref = model(inputs_embeds=embeds).logits[0, -1]
    fast.reset()
    got = fast.step(embeds)[0]
    assert float((got - ref).abs().max()) < 0.03 * float(ref.abs().max())
    a, b = _greedy_decoder(fast, embeds, 6), _greedy_decoder(plain, embeds, 6)
    assert float((a - b).abs().max()) < 0.03 * float(b.abs().max())
    assert torch.equal(a, _greedy_decoder(fast, embeds, 6))          # reset repeats exactly


def test_int8_prefill_needs_per_channel_codes():
    model = _rtn(_llama())                                           # group 64
    assert OrtLlamaDecoder(model).prefill == 'nbits'
    with pytest.raises(OrtInt4Error, match='group-wise'):
        OrtLlamaDecoder(model, prefill='int8')
    with pytest.raises(OrtInt4Error, match='prefill'):
        OrtLlamaDecoder(model, prefill='fast')
