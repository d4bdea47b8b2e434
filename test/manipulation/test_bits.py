"""INT3 / INT2 VLA students: quantize_awq(bits=...), their int4-kernel deployment, and the
bench's --bits / --group-size options."""
import argparse

import pytest
import torch

from qail_ros.errors import ParameterError
from qail_ros.manipulation.vla import rollouts

pytest.importorskip('mujoco')


@pytest.fixture(scope='module')
def states():
    s, _ = rollouts('lift', [0, 1], None, label='expert')
    return s


def _quant_layers(vla):
    from qail_ros.quant.modules import QuantLinear
    return {n: m for n, m in vla.model.language_model.named_modules()
            if isinstance(m, QuantLinear)}


@pytest.mark.parametrize('scheme', ['rtn', 'awq'])
@pytest.mark.parametrize('bits', [3, 2])
def test_low_bit_students_have_at_most_2_to_the_bits_levels_per_channel(small, states, scheme,
                                                                        bits):
    from qail_ros.manipulation.qail_vla import quantize_awq, weight_bits
    student = quantize_awq(small, states, scheme=scheme, bits=bits, n_calibration=8)
    assert weight_bits(student) == bits        # what the trainer's config and log name
    layers = _quant_layers(student)
    assert layers and 'lm_head' not in layers
    fp_weights = dict(small.model.language_model.named_parameters())
    for name, m in layers.items():
        assert m.weight_quant.bits == bits
        with torch.no_grad():
            wq = m.weight_quant(m.weight)     # AWQ: Q(W * s), the quantized stored weight
        levels = max(len(torch.unique(row)) for row in wq)
        assert 2 <= levels <= 2 ** bits, (name, levels)
        eff = wq if m.input_scale is None else wq / m.input_scale
        assert not torch.allclose(eff, fp_weights[f'{name}.weight']), name


def test_int3_student_runs_on_the_int4_kernel_with_the_same_weights(small, states):
    from qail_ros.manipulation.qail_vla import deploy, quantize_awq
    student = quantize_awq(small, states, scheme='rtn', bits=3)
    images, instr = states.images[:4], states.instructions[:4]
    tokens = torch.as_tensor(small.generate(images, instr)[0])
    fake_w = {n: m.weight_quant(m.weight).detach() for n, m in _quant_layers(student).items()}
    with torch.no_grad():
        fake = student.teacher_forced_logits(images, instr, tokens)
    deploy(student)
    deployed = {n: m for n, m in student.model.language_model.named_modules()
                if type(m).__name__ == 'Int4WeightOnlyLinear'}
    assert set(deployed) == set(fake_w)
    for name, m in deployed.items():
        assert m.bits == 3 and m.uses_kernel
        codes = m.codes()
        assert int(codes.min()) >= 0 and int(codes.max()) <= 7
        torch.testing.assert_close(m.dequantized_weight(), fake_w[name], atol=1e-5, rtol=1e-5)
    with torch.no_grad():
        kernel = student.teacher_forced_logits(images, instr, tokens)
    assert (kernel - fake).abs().max() < 0.05 * fake.abs().max()


def test_unsupported_widths_and_schemes_are_refused(small, states):
    from qail_ros.manipulation.qail_vla import quantize_awq
    with pytest.raises(ParameterError, match='bits=5'):
        quantize_awq(small, states, bits=5)
    with pytest.raises(ParameterError, match='use awq or rtn'):
        quantize_awq(small, states, scheme='gptq', bits=3)


def _settings(argv):
    from qail_ros.bench import manipulation as bm
    parser = argparse.ArgumentParser()
    bm.add_arguments(parser)
    return bm.settings_from(parser.parse_args(argv))


def test_bench_bits_option_sets_width_labels_and_file_name():
    from qail_ros.bench import manipulation as bm
    from qail_ros.manipulation import benchmark as mb
    s = _settings(['--bits', '3', '--methods', 'fp,rtn_int4,qail_qbc_int4'])
    assert s['bits'] == 3 and s['group_size'] == 0
    assert mb.quant_kwargs(s) == {'bits': 3, 'granularity': 'per_channel', 'group_size': 128}
    assert mb.results_name(s) == 'manipulation_int3'
    assert mb.results_name(_settings([])) == 'manipulation' and _settings([])['bits'] == 4
    g = _settings(['--bits', '2', '--group-size', '32'])
    assert mb.quant_kwargs(g) == {'bits': 2, 'granularity': 'group', 'group_size': 32}
    assert set(mb.FP_KEYS).isdisjoint({'bits', 'group_size'})   # the FP cache is shared
    with pytest.raises(SystemExit):
        _settings(['--bits', '5'])
    with pytest.raises(ParameterError, match='--group-size 48'):
        _settings(['--group-size', '48'])
    episode = {'success': 0.5, 'episodes': 2, 'successes': 1}
    result = {'command': 'qail-ros bench manipulation --bits 3', 'commit': 'abc',
              'date': 'today', 'elapsed_s': 60.0, 'settings': dict(s, tasks=['lift']),
              'methods': {m: {'seeds': [{'lift': episode}]} for m in s['methods']}}
    md = bm.markdown(result)
    assert '# Manipulation benchmark: small VLA, INT3 weight-only backbone' in md
    assert '| RTN INT3 |' in md and '| QAIL+QBC INT3 (QLoRA) |' in md and 'INT4 |' not in md
    assert '3-bit codes are a subset' in md


def test_bench_quick_run_at_int3(tmp_path, capsys):
    import json

    from qail_ros.cli import main as cli
    rc = cli(['bench', 'manipulation', '--quick', '--tasks', 'lift', '--methods', 'fp,rtn_int4',
              '--bits', '3', '--episodes', '1', '--out', str(tmp_path / 'out'),
              '--write', str(tmp_path / 'docs'), '--json'])
    assert rc == 0
    last = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert last['settings']['bits'] == 3
    assert {r['method'] for r in last['summary']} == {'fp', 'rtn_int4'}
    assert (tmp_path / 'docs' / 'manipulation_int3.json').is_file()
    assert '| RTN INT3 |' in (tmp_path / 'docs' / 'manipulation_int3.md').read_text()
