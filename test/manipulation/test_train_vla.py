"""VLA students from bags: data set -> QLoRA QAIL+QBC -> OpenVLAPolicy / vla_policy loading."""
import json

import numpy as np
import pytest
import torch

from qail_ros import image as im
from qail_ros import messages as m
from qail_ros.bag import BagWriter
from qail_ros.dataset import build_dataset
from qail_ros.errors import ParameterError
from qail_ros.manipulation.vla import (UNNORM_KEY, Samples, SmallVLA, rollouts,
                                       samples_from_dataset)

pytest.importorskip('mujoco')
T0 = 1_763_890_000_000_000_000


def write_bags(tmp_path, samples, per_episode):
    """Bags as a robot would record vla_policy's inputs and its unstamped action array."""
    paths = []
    for e, start in enumerate(range(0, len(samples), per_episode)):
        path = tmp_path / f'ep{e}'
        with BagWriter(path) as bag:
            bag.write('/instruction', m.new('std_msgs/msg/String',
                                            data=samples.instructions[start]), T0 - 1)
            for k in range(start, min(start + per_episode, len(samples))):
                stamp = T0 + k * 100_000_000
                bag.write('/image_raw', im.from_numpy(samples.images[k], 'rgb8', stamp=stamp),
                          stamp + 1000)
                bag.write('/vla_policy/action', m.new(
                    'std_msgs/msg/Float32MultiArray',
                    data=samples.actions[k].astype(np.float32)), stamp + 20_000_000)
        paths.append(path)
    return paths


@pytest.fixture(scope='module')
def recorded(tmp_path_factory):
    tmp = tmp_path_factory.mktemp('vla_bags')
    eps = [rollouts('lift', [seed], None, label='expert')[0] for seed in (0, 1)]
    eps = [Samples(e.images[:12], e.instructions[:12], e.actions[:12], e.source[:12])
           for e in eps]           # one bag per episode, 12 frames each
    samples = Samples.concat(eps)
    bags = write_bags(tmp, samples, 12)
    tmap = tmp / 'map.yaml'
    tmap.write_text('images: {front: /image_raw}\naction: /vla_policy/action\n'
                    'instruction: /instruction\npairing: receive_time\nmax_gap_ms: 50\n')
    build_dataset(bags, tmp / 'ds', topic_map=tmap, val_fraction=0.0)
    teacher = SmallVLA.create(0, llm_hidden=64, llm_layers=2)
    with torch.no_grad():
        for p in teacher.model.language_model.parameters():
            if p.dim() > 1:
                p.mul_(5.0)
    teacher.save(tmp / 'fp')
    return tmp, samples


def test_dataset_from_bags_gives_the_recorded_samples(recorded):
    tmp, samples = recorded
    got = samples_from_dataset(tmp / 'ds', 'all')
    assert len(got) == len(samples)
    np.testing.assert_array_equal(got.images, samples.images)
    np.testing.assert_allclose(got.actions, samples.actions, atol=1e-6)
    assert got.instructions == samples.instructions


def test_cli_trains_a_student_that_vla_policy_loads(recorded, capsys):
    from qail_ros.cli import main as cli
    from qail_ros.openvla.policy import OpenVLAPolicy
    tmp, samples = recorded
    out = tmp / 'student'
    assert cli(['train-vla', '--teacher', str(tmp / 'fp'), '--data', str(tmp / 'ds'),
                '--split', 'all', '--steps', '3', '--rank', '4', '--batch-size', '8',
                '-o', str(out), '--json']) == 0
    captured = capsys.readouterr()
    summary = json.loads(captured.out.strip().splitlines()[-1])
    assert summary['samples'] == len(samples) and summary['final_qbc'] is not None
    # the trainer's progress (a module logger) reaches the user on stderr, not in the JSON
    assert 'qail_qbc w4a16 step 3/3' in captured.err and 'step 3/3' not in captured.out
    policy = OpenVLAPolicy.from_pretrained(
        tmp / 'fp', precision='int4', unnorm_key=UNNORM_KEY,
        int4_weights=out / 'int4_backbone.safetensors',
        lora_weights=out / 'adapters.safetensors')
    assert policy.int4_details['lora']['rank'] == 4
    assert policy.predict(samples.images[0], samples.instructions[0]).tokens.shape == (7,)


def test_policy_with_adapters_acts_as_the_trained_student(recorded):
    """OpenVLAPolicy(int4 + lora) reproduces the in-process student on the int4 kernel."""
    from qail_ros.manipulation.qail_vla import deploy, quantize_awq, train_qlora
    from qail_ros.openvla.policy import OpenVLAPolicy
    from qail_ros.quant import save_quantized
    from qail_ros.quant.lora import save_lora
    tmp, samples = recorded
    teacher = SmallVLA.load(tmp / 'fp')
    student = quantize_awq(teacher, samples, n_calibration=8)
    save_quantized(student.model.language_model, tmp / 'b.safetensors')
    train_qlora(student, teacher, samples, steps=4, qbc_lambda=1.0, rank=4, batch=8, lr=5e-2)
    save_lora(student.model.language_model, tmp / 'a.safetensors')
    deploy(student)
    tokens, logits = student.generate(samples.images[:5], samples.instructions[:5])
    plain = OpenVLAPolicy.from_pretrained(tmp / 'fp', precision='int4', unnorm_key=UNNORM_KEY,
                                          int4_weights=tmp / 'b.safetensors')
    policy = OpenVLAPolicy.from_pretrained(tmp / 'fp', precision='int4', unnorm_key=UNNORM_KEY,
                                           int4_weights=tmp / 'b.safetensors',
                                           lora_weights=tmp / 'a.safetensors')
    moved = 0.0
    for i in range(5):
        r = policy.predict(samples.images[i], samples.instructions[i])
        assert np.array_equal(r.tokens, tokens[i])
        ids = policy._bin_ids.numpy()
        # the int4 kernel computes in bf16: batch 5 vs batch 1 round differently
        np.testing.assert_allclose(r.bin_logits, logits[i][:, ids], atol=1e-2)
        base = plain.predict(samples.images[i], samples.instructions[i])
        moved = max(moved, float(np.abs(base.bin_logits - r.bin_logits).max()))
    assert moved > 1e-3          # the adapters really act
    # the same adapters inside the onnxruntime graph (float32 compute: no bf16 rounding)
    graph = OpenVLAPolicy.from_pretrained(tmp / 'fp', precision='int4_ort',
                                          unnorm_key=UNNORM_KEY,
                                          int4_weights=tmp / 'b.safetensors',
                                          lora_weights=tmp / 'a.safetensors', ort_threads=1)
    assert graph.int4_details['engine'] == 'graph' and graph.int4_details['lora']['rank'] == 4
    for i in range(5):
        r = graph.predict(samples.images[i], samples.instructions[i])
        np.testing.assert_allclose(r.bin_logits, logits[i][:, policy._bin_ids.numpy()],
                                   atol=3e-2)


def test_bad_inputs_name_the_fix(recorded, tmp_path):
    from qail_ros.openvla.config import OpenVLAError
    from qail_ros.openvla.policy import OpenVLAPolicy
    tmp, _ = recorded
    with pytest.raises(OpenVLAError, match='precision int4 or int4_ort'):
        OpenVLAPolicy.from_pretrained(tmp / 'fp', precision='fp32',
                                      lora_weights=tmp / 'a.safetensors')
    with pytest.raises(OpenVLAError, match='graph engine'):
        OpenVLAPolicy.from_pretrained(tmp / 'fp', precision='int4_ort', ort_graph=False,
                                      int4_weights=tmp / 'b.safetensors',
                                      lora_weights=tmp / 'a.safetensors')
    with pytest.raises(OpenVLAError, match='int4_weights'):
        OpenVLAPolicy.from_pretrained(tmp / 'fp', precision='int4',
                                      lora_weights=tmp / 'a.safetensors')
    bag = tmp_path / 'b'
    with BagWriter(bag) as w:
        for k in range(3):
            stamp = T0 + k * 100_000_000
            w.write('/image_raw', im.from_numpy(np.zeros((8, 8, 3), np.uint8), 'rgb8',
                                                stamp=stamp), stamp + 10)
            w.write('/cmd', m.new('std_msgs/msg/Float64MultiArray',
                                  data=np.array([0.5, 1.0])), stamp + 20)
    tmap = tmp_path / 'map.yaml'
    tmap.write_text('images: {front: /image_raw}\naction: /cmd\npairing: receive_time\n')
    build_dataset([bag], tmp_path / 'ds', topic_map=tmap, val_fraction=0.0)
    with pytest.raises(ParameterError, match='7 values'):
        samples_from_dataset(tmp_path / 'ds', 'all')
