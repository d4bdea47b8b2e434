"""`qail-ros bench decode` options: the GEMV decode attention and the static KV cache give the
same logits as transformers' SDPA with its dynamic cache."""
import pytest

torch = pytest.importorskip('torch')
pytest.importorskip('transformers', reason='the decode benchmark builds a transformers Llama')


def _decode_logits(model, embeds, tokens: int, cache: str):
    from transformers import StaticCache
    past = None
    if cache == 'static':
        past = StaticCache(config=model.config, max_cache_len=embeds.shape[1] + tokens)
    with torch.no_grad():
        out = model(inputs_embeds=embeds, past_key_values=past, use_cache=True)
        logits = [out.logits[:, -1]]
        for _ in range(tokens):
            tok = logits[-1].argmax(-1, keepdim=True)
            out = model(input_ids=tok, past_key_values=out.past_key_values, use_cache=True)
            logits.append(out.logits[:, -1])
    return torch.stack(logits)


@pytest.mark.parametrize('cache', ['dynamic', 'static'])
def test_gemv_attention_and_static_cache_match_sdpa(cache, monkeypatch):
    from qail_ros.openvla import decode_latency as pipeline
    from qail_ros.openvla.decode_latency import build_fp32
    queries = []

    def spy(module, query, *args, **kwargs):
        queries.append(query.shape[2])
        return real(module, query, *args, **kwargs)
    real = pipeline.gemv_attention
    monkeypatch.setattr(pipeline, 'gemv_attention', spy)
    embeds = torch.randn(1, 9, 128, generator=torch.Generator().manual_seed(0))
    ref = _decode_logits(build_fp32(128, 256, 2, 4), embeds, 3, 'dynamic')
    gemv_model = build_fp32(128, 256, 2, 4, attention='gemv')
    assert gemv_model.config._attn_implementation == 'qail_gemv'
    got = _decode_logits(gemv_model, embeds, 3, cache)
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-5)
    assert queries.count(1) == 3 * 2 and queries.count(9) == 2   # 3 steps x 2 layers, prompt
    # the decode steps differ from the prompt's last logits: the comparison covers them
    assert (ref[1:] - ref[0]).abs().max() > 1e-3
