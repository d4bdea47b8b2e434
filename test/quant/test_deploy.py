"""quant.deploy: one verb from a fake-quantized model to its deployable form, equal to the
functions it replaces (convert_to_integer, OrtLlamaDecoder + freeing the layers)."""
import copy

import pytest

torch = pytest.importorskip('torch')
from torch import nn  # noqa: E402

from qail_ros import quant  # noqa: E402


def _mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 8)).eval()


def test_integer_target_is_convert_to_integer():
    x = torch.randn(4, 64, generator=torch.Generator().manual_seed(1))
    fake = quant.quantize_(_mlp(), quant.WeightOnlyRTN(bits=4, granularity='per_channel'))
    ref = quant.convert_to_integer(copy.deepcopy(fake))
    got = quant.deploy(copy.deepcopy(fake), 'integer')
    assert type(got[0]) is type(ref[0]) and type(got[0]).__name__ != 'QuantLinear'
    with torch.no_grad():
        torch.testing.assert_close(got(x), ref(x), rtol=0, atol=0)
    # with a config it quantizes first: the same model in one call
    one = quant.deploy(_mlp(), 'integer',
                       config=quant.WeightOnlyRTN(bits=4, granularity='per_channel'))
    with torch.no_grad():
        torch.testing.assert_close(one(x), ref(x), rtol=0, atol=0)


def test_errors_name_the_problem():
    with pytest.raises(ValueError, match="deploy target 'tensorrt'"):
        quant.deploy(_mlp(), 'tensorrt')
    with pytest.raises(ValueError, match='no fake-quantized layers'):
        quant.deploy(_mlp(), 'integer')
    with pytest.raises(ValueError, match="int4_compute_dtype 'int8'"):
        quant.deploy(_mlp(), 'integer', int4_compute_dtype='int8')
    with pytest.raises(ValueError, match="needs the graph target 'ort'"):
        quant.deploy(_mlp(), 'ort-layers', device='cuda')


def test_ort_target_owns_and_frees_the_decoder():
    pytest.importorskip('transformers')
    from qail_ros.quant.ort_int4 import ort_available
    if not ort_available():
        pytest.skip('onnxruntime / onnx not installed')
    from qail_ros.openvla.decode_latency import build_fp32
    model = build_fp32(64, 128, 2, 4)
    ids = torch.randint(0, 32064, (1, 5), generator=torch.Generator().manual_seed(0))
    cfg = quant.WeightOnlyRTN(bits=4, granularity='per_channel')
    fake = quant.quantize_(copy.deepcopy(model), cfg)
    with torch.no_grad():
        ref = fake(input_ids=ids).logits[0, -1]
    decoder = quant.deploy(model, 'ort', config=cfg, capacity=16)
    assert type(decoder).__name__ == 'OrtLlamaDecoder'
    assert len(model.model.layers) == 0 and isinstance(model.lm_head, nn.Identity)
    decoder.reset()
    logits = decoder.step(decoder.embed(ids[0]))[0]
    assert float((logits - ref).abs().max()) < 5e-2 * float(ref.abs().max())
