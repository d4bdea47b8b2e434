"""OpenVLA with precision 'int4_ort': the INT4 backbone on onnxruntime MatMulNBits, on the
shipped tiny checkpoint, against the fake-quant reference of the same codes."""
import copy
from pathlib import Path

import numpy as np
import pytest

from qail_ros.openvla import OpenVLAError

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / 'models' / 'openvla-tiny'
torch = pytest.importorskip('torch')
pytest.importorskip('transformers', reason='the Llama backbone needs transformers')
ort_int4 = pytest.importorskip('qail_ros.quant.ort_int4')
if not ort_int4.ort_available():
    pytest.skip('onnxruntime / onnx not installed', allow_module_level=True)

INSTRUCTIONS = ['pick up the red block', 'open the drawer', 'put the carrot on the plate']
#: accuracy_level 4 (int8 activations per block of 64) vs the float fake-quant reference:
#: largest bin-logit difference, absolute. Measured on these cases: <= 0.08 where the tokens
#: agree (logit scale ~2.5, i.e. ~3 %); torch's int4 kernel (bf16 activations) <= 0.04.
TOL = 0.12


@pytest.fixture(scope='module')
def frames():
    rng = np.random.default_rng(11)
    ramp = np.linspace(0, 255, 64 * 80 * 3).reshape(64, 80, 3).astype(np.uint8)
    return [rng.integers(0, 256, (120, 160, 3), np.uint8),
            rng.integers(0, 256, (56, 56, 3), np.uint8), np.zeros((48, 64, 3), np.uint8), ramp]


@pytest.fixture(scope='module', params=[('rtn', 128), ('awq', 128), ('awq', 0)],
                ids=['rtn', 'awq', 'awq-per-channel'])
def fake(request):
    """The fake-quantized (float compute) INT4 reference, per scheme (group size 0: per
    channel, which MatMulNBits runs in blocks of 256 or, for a short input, one block)."""
    from qail_ros.openvla.policy import OpenVLAPolicy
    scheme, group = request.param
    policy = OpenVLAPolicy.from_pretrained(TINY, unnorm_key='bridge_orig')
    policy.quantize_int4(scheme, group_size=group)
    assert policy.int4_details['group_size'] == (64 if group else 0)
    return policy


def _converted(fake, **kwargs):
    policy = copy.deepcopy(fake)
    policy.convert_int4('ort', **kwargs)
    return policy


def test_float_compute_on_the_same_codes_gives_the_reference_actions(fake, frames):
    """accuracy_level 1 (float32 compute): the MatMulNBits weights ARE the fake-quant weights
    (codes, scales, zero points, AWQ input scales), so every action token and action agrees
    and the bin logits differ by float rounding only."""
    ort = _converted(fake, accuracy_level=1)
    for frame in frames:
        for text in INSTRUCTIONS:
            ref, got = fake.predict(frame, text), ort.predict(frame, text)
            assert np.array_equal(got.tokens, ref.tokens), (frame.shape, text)
            assert np.array_equal(got.action, ref.action)
            assert np.abs(got.bin_logits - ref.bin_logits).max() < 1e-4


def test_int8_activations_give_the_reference_tokens_within_the_logit_tolerance(fake, frames):
    """The default (accuracy_level 4): every step's bin logits within TOL of the reference,
    and the same token at every step whose top-2 logit margin exceeds 2 TOL; after a step
    whose margin is smaller the two may pick different tokens and their contexts differ, so
    the comparison stops there (the tiny random model has near-flat logits)."""
    ort = _converted(fake)
    steps = full = 0
    for frame in frames:
        for text in INSTRUCTIONS:
            ref, got = fake.predict(frame, text), ort.predict(frame, text)
            logits = _full_logits(fake, frame, text)
            top2 = np.sort(logits, axis=1)[:, -2:]
            for i in range(len(ref.tokens)):
                diff = np.abs(got.bin_logits[i] - ref.bin_logits[i]).max()
                assert diff < TOL, (frame.shape, text, i, diff)
                if top2[i, 1] - top2[i, 0] > 2 * TOL:
                    assert got.tokens[i] == ref.tokens[i], (frame.shape, text, i)
                steps += 1
                if got.tokens[i] != ref.tokens[i]:
                    break
            full += bool(np.array_equal(got.tokens, ref.tokens))
    cases = len(frames) * len(INSTRUCTIONS)
    # most greedy decodes agree on all 7 tokens (measured: 16-18 of 20 similar cases)
    assert full >= cases // 2, (full, cases)
    assert steps >= 5 * cases          # decode steps (not only prefill) were compared


def _full_logits(policy, frame, text) -> np.ndarray:
    """The reference's whole-vocabulary logits (7, V) of its greedy decode."""
    with torch.no_grad():
        _, logits = policy.model.generate_actions(policy.pixel_values(frame),
                                                  policy.prompt_ids(text), policy.action_dim)
    return logits[0].numpy()


def test_from_pretrained_int4_ort_runs_the_decoder_as_one_graph(frames):
    """The default engine: decoder layers + norm + lm_head in one onnxruntime graph; the torch
    decoder layers are freed, the towers, projector and embeddings stay torch."""
    from qail_ros.openvla.policy import OpenVLAPolicy
    from qail_ros.quant.ort_int4 import ORT_MODULES
    from qail_ros.quant.ort_llama import OrtLlamaDecoder
    p = OpenVLAPolicy.from_pretrained(TINY, unnorm_key='bridge_orig', precision='int4_ort',
                                      int4_scheme='awq', ort_threads=1)
    assert p.precision == 'int4_ort' and p.int4_state == 'ort'
    assert p.dtype == torch.float32
    assert p.describe()['int4'] == {'scheme': 'awq', 'group_size': 64,
                                    'backend': 'onnxruntime', 'accuracy_level': 4,
                                    'threads': 1, 'engine': 'graph'}
    dec = p.model.decoder
    assert isinstance(dec, OrtLlamaDecoder) and dec.layers == p.config.llama_config(
    ).num_hidden_layers
    lm = p.model.language_model
    assert len(lm.model.layers) == 0 and isinstance(lm.lm_head, torch.nn.Identity)
    assert isinstance(lm.model.embed_tokens, torch.nn.Embedding)
    assert not any(isinstance(m, ORT_MODULES) for m in p.model.modules())
    r = p.predict(frames[0], INSTRUCTIONS[0])
    assert r.action.shape == (7,) and np.all(np.isfinite(r.bin_logits))
    # the cache is reset per action: a second prediction is identical
    assert np.array_equal(p.predict(frames[0], INSTRUCTIONS[0]).bin_logits, r.bin_logits)


def test_per_layer_engine_swaps_only_the_backbone_linears(fake, frames):
    """graph=False: each linear (fused q/k/v, each gated MLP) is its own session inside
    transformers' forward; same tokens as the graph engine at float32 compute."""
    from qail_ros.quant.ort_int4 import ORT_MODULES, OrtInt4GatedMLP, OrtInt4Slice
    p = _converted(fake, graph=False, threads=1)
    assert p.int4_details['engine'] == 'layers' and p.model.decoder is None
    lm = p.model.language_model
    layers = lm.model.layers
    assert all(isinstance(layer.mlp, OrtInt4GatedMLP) for layer in layers)
    attn = layers[0].self_attn
    assert isinstance(attn.q_proj, OrtInt4Slice) and attn.q_proj.fused is attn.v_proj.fused
    assert not isinstance(attn.o_proj, torch.nn.Linear)
    assert type(lm.lm_head) is torch.nn.Linear               # lm_head stays float
    assert not any(isinstance(m, ORT_MODULES) for m in p.model.vision_backbone.modules())
    assert not any(isinstance(m, ORT_MODULES) for m in p.model.projector.modules())
    layered = _converted(fake, graph=False, accuracy_level=1)
    graph = _converted(fake, accuracy_level=1)
    for text in INSTRUCTIONS:
        a, b = layered.predict(frames[0], text), graph.predict(frames[0], text)
        assert np.array_equal(a.tokens, b.tokens)
        assert np.abs(a.bin_logits - b.bin_logits).max() < 1e-4


def test_saved_int4_backbone_loads_onto_onnxruntime(tmp_path, frames):
    """int4_weights (OpenVLAPolicy.save_int4) + int4_ort = converting the in-memory model."""
    from qail_ros.openvla.policy import OpenVLAPolicy
    a = OpenVLAPolicy.from_pretrained(TINY, unnorm_key='bridge_orig')
    a.quantize_int4('rtn')
    path = a.save_int4(tmp_path / 'backbone.safetensors')
    a.convert_int4('ort')
    b = OpenVLAPolicy.from_pretrained(TINY, unnorm_key='bridge_orig', precision='int4_ort',
                                      int4_weights=path)
    assert b.int4_details['file'] == str(path)
    for text in INSTRUCTIONS[:2]:
        assert np.array_equal(a.predict(frames[1], text).bin_logits,
                              b.predict(frames[1], text).bin_logits)


def test_conversion_errors_name_the_fix(monkeypatch):
    from qail_ros.openvla import policy as policy_mod
    from qail_ros.openvla.policy import OpenVLAPolicy
    p = OpenVLAPolicy.from_pretrained(TINY, unnorm_key='bridge_orig')
    with pytest.raises(OpenVLAError, match='quantize_int4'):
        p.convert_int4('ort')
    p.quantize_int4('rtn')
    with pytest.raises(OpenVLAError, match="choose 'torch' or 'ort'"):
        p.convert_int4('tensorrt')
    monkeypatch.setattr(ort_int4, 'ort_available', lambda: False)
    with pytest.raises(OpenVLAError, match='pip install onnxruntime onnx'):
        p.convert_int4('ort')
    assert p.int4_state == 'fake'                     # nothing was converted
    with pytest.raises(OpenVLAError, match="is for precision 'int4_ort'"):
        OpenVLAPolicy.from_pretrained(TINY, unnorm_key='bridge_orig', ort_device='cuda')
    with pytest.raises(OpenVLAError, match="precision 'int4'"):
        policy_mod.OpenVLAPolicy.from_pretrained(TINY, unnorm_key='bridge_orig',
                                                 precision='int4_ort')


def test_parameter_count_is_the_same_on_every_engine():
    """num_parameters counts the weights wherever they live (torch, int kernels, the graph):
    the node logs it, so it must not shrink when the decoder moves to onnxruntime."""
    from qail_ros.openvla.policy import OpenVLAPolicy
    counts = {}
    for precision in ('fp32', 'int4', 'int4_ort'):
        p = OpenVLAPolicy.from_pretrained(TINY, unnorm_key='bridge_orig', precision=precision,
                                          ort_threads=1)
        counts[precision] = p.num_parameters()
    assert counts['int4'] == counts['fp32'] == counts['int4_ort'], counts
