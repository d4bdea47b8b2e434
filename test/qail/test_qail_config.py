"""TrainConfig: validation and the YAML round trip."""
import pytest

from qail_ros.qail.config import TrainConfig, TrainConfigError, parse_bits


def test_yaml_round_trip(tmp_path):
    cfg = TrainConfig(method='qail_wqbc', bits='w3a3', steps=123, lr=1e-4, onpolicy_every=50,
                      grad_clip=None, extra={'task': 'walker-stand'})
    path = tmp_path / 'train.yaml'
    text = cfg.to_yaml(path)
    assert 'method: qail_wqbc' in text
    assert TrainConfig.from_yaml(path) == cfg
    assert TrainConfig.from_yaml(text) == cfg


def test_method_semantics_and_aliases():
    assert TrainConfig(method='qail').canonical_method == 'qat'
    c = TrainConfig(method='qail_qbc')
    assert c.uses_qail and c.uses_qbc and c.resolved_weighting == 'none'
    assert TrainConfig(method='qail_wqbc').resolved_weighting == 'wqbc'
    assert TrainConfig(method='qail_qbc', weighting='qrd').resolved_weighting == 'qrd'
    assert not TrainConfig(method='ptq_rtn').trains
    assert TrainConfig(bits='w4a16').act_bits is None
    assert parse_bits('W8A8') == (8, 8)


@pytest.mark.parametrize('kwargs, match', [
    ({'method': 'awq'}, 'method'),
    ({'bits': 'int4'}, 'bits'),
    ({'lr': 0}, 'lr'),
    ({'beta': 0.5}, 'beta'),
    ({'method': 'qat', 'weighting': 'wqbc'}, 'no QBC term'),
    ({'method': 'qail_wqbc', 'weighting': 'none'}, 'weighted'),
    ({'qbc_distance': 'kl'}, 'deterministic'),
    ({'onpolicy_fraction': 1.0}, 'onpolicy_fraction'),
])
def test_bad_values_raise_with_the_field_name(kwargs, match):
    with pytest.raises(TrainConfigError, match=match):
        TrainConfig(**kwargs)


def test_unknown_keys_suggest_the_right_one():
    with pytest.raises(TrainConfigError, match='did you mean steps'):
        TrainConfig.from_dict({'stepz': 3})


def test_config_and_package_import_no_torch():
    """A node can read and validate a training config without loading torch."""
    import subprocess
    import sys
    code = ('import sys, qail_ros.qail\n'
            'from qail_ros.qail.config import TrainConfig\n'
            "TrainConfig.from_yaml(TrainConfig(method='qail_wqbc').to_yaml())\n"
            "assert 'torch' not in sys.modules, 'torch was imported'\n")
    subprocess.run([sys.executable, '-c', code], check=True)
