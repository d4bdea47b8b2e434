"""`qail-ros bench decode --policy`: whole actions through OpenVLAPolicy.predict, per policy
precision, on the shipped tiny checkpoint (no timing is asserted)."""
import argparse
import json

import pytest

pytest.importorskip('torch')
pytest.importorskip('transformers', reason='the decode benchmark builds a transformers Llama')


def test_policy_action_times_for_each_policy_precision(monkeypatch, capsys):
    from qail_ros.bench import decode
    from qail_ros.openvla import decode_latency as pipeline
    from qail_ros.quant.ort_int4 import ort_available
    if not ort_available():
        pytest.skip('onnxruntime / onnx not installed')
    monkeypatch.setenv('HF_HUB_OFFLINE', '1')
    monkeypatch.setitem(pipeline.LAYOUTS, 'small', (128, 256, 1, 2))
    monkeypatch.setattr(pipeline, 'measure_bandwidth_gbps', lambda mbytes=0, repeats=0: 5.0)
    loaded = []
    real = pipeline.time_policy

    def spy(path, precision, *a, **kw):
        r = real(path, precision, *a, **kw)
        loaded.append((precision, r['precision']))
        return r
    monkeypatch.setattr(pipeline, 'time_policy', spy)
    args = argparse.Namespace(small=True, threads=1, tokens=2, prompt=8, repeats=1,
                              precisions='fp32,int8,int4_ort', json=True,
                              policy='models/openvla-tiny', unnorm_key=None)
    assert decode.main(args) == 0
    text = capsys.readouterr().out.strip()
    out = json.loads(text.splitlines()[-1])
    assert 'whole action through OpenVLAPolicy.predict' in text
    # int8 is a Llama-only precision: the policy runs fp32 and int4_ort, really at int4_ort
    assert loaded == [('fp32', 'fp32'), ('int4_ort', 'int4_ort')]
    pol = out['policy']
    assert pol['path'].endswith('openvla-tiny') and pol['parameters'] > 0
    assert set(pol['action_ms']) == set(pol['inference_ms']) == {'fp32', 'int4_ort'}
    # the benchmark's quantization reaches the policy: per channel by default
    assert pol['group_size'] == {'fp32': None, 'int4_ort': 0}
    assert all(0 < pol['inference_ms'][p] <= pol['action_ms'][p] for p in pol['action_ms'])
    assert set(out['action_ms']) == {'fp32', 'int8', 'int4_ort'}   # the Llama part unchanged
