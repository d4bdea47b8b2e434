"""The small VLA: checkpoint compatibility with OpenVLAPolicy, batched decoding, QLoRA students."""
import numpy as np
import pytest
import torch

from qail_ros.manipulation.tasks import TabletopEnv
from qail_ros.manipulation.vla import SmallVLA, rollouts

pytest.importorskip('mujoco')


@pytest.fixture(scope='module')
def states():
    s, _ = rollouts('place', [0, 1, 2], None, label='expert')
    return s


def test_teacher_forced_logits_match_greedy_decode(small, states):
    """The training forward (one pass, right-padded, mixed prompt lengths) gives the logits
    the KV-cached greedy decode saw: the index arithmetic of both is right."""
    lift, _ = rollouts('lift', [3], None, label='expert')
    images = np.concatenate([states.images[:3], lift.images[:2]])
    instr = states.instructions[:3] + lift.instructions[:2]
    assert len({len(small.prompt_ids(s)) for s in instr}) == 2
    tokens, logits = small.generate(images, instr)
    with torch.no_grad():
        forced = small.teacher_forced_logits(images, instr, torch.as_tensor(tokens))
    np.testing.assert_allclose(forced.numpy(), logits, atol=2e-4)
    assert len({tuple(t) for t in tokens}) > 1       # depends on the inputs


def test_saved_directory_loads_in_openvla_policy(small, states, tmp_path):
    from qail_ros.openvla.policy import OpenVLAPolicy
    from qail_ros.manipulation.vla import UNNORM_KEY
    path = small.save(tmp_path / 'vla')
    policy = OpenVLAPolicy.from_pretrained(path, unnorm_key=UNNORM_KEY)
    again = SmallVLA.load(path)
    tokens, _ = small.generate(states.images[:4], states.instructions[:4])
    assert np.array_equal(again.generate(states.images[:4], states.instructions[:4])[0], tokens)
    for i in range(4):
        result = policy.predict(states.images[i], states.instructions[i])
        assert np.array_equal(result.tokens, tokens[i])
        np.testing.assert_allclose(result.action, small.tokens_to_actions(tokens[i:i + 1])[0])


def test_action_tokens_round_trip(small):
    actions = np.array([[1.0, -1.0, 0.3, 0, 0, 0, 1.0], [-0.5, 0.0, -1.0, 0, 0, 0, -1.0]])
    back = small.tokens_to_actions(small.action_tokens(actions).numpy())
    np.testing.assert_allclose(back, actions, atol=2 / 255)


def test_qlora_student_trains_adapters_only_and_deploys_on_int4_kernel(small, states):
    from qail_ros.manipulation.qail_vla import deploy, quantize_awq, train_qlora
    from qail_ros.quant.lora import LoRALinear, lora_state_dict
    student = quantize_awq(small, states, n_calibration=8)
    frozen = {n: p.detach().clone() for n, p in student.model.named_parameters()}
    before = student.generate(states.images[:6], states.instructions[:6])
    info = train_qlora(student, small, states, steps=3, qbc_lambda=1.0, tasks=('lift',),
                       onpolicy_rounds=1, onpolicy_episodes=2, rank=4)
    assert info['onpolicy_states'] > 0 and info['final_qbc'] is not None
    adapters = lora_state_dict(student.model.language_model)
    assert adapters and any(t.abs().sum() > 0 for n, t in adapters.items()
                            if n.endswith('lora_b'))
    after_names = dict(student.model.named_parameters())
    for name, value in frozen.items():      # base weights untouched (now under .base.)
        moved = name.replace('_proj.weight', '_proj.base.weight')
        cur = after_names.get(name, after_names.get(moved))
        assert cur is not None and torch.equal(cur, value), name
    images, instr = states.images[:6], states.instructions[:6]
    tokens = torch.as_tensor(before[0])
    with torch.no_grad():
        fake = student.teacher_forced_logits(images, instr, tokens)
    deploy(student)
    layers = [m for m in student.model.language_model.modules() if isinstance(m, LoRALinear)]
    assert layers and all(type(m.base).__name__ == 'Int4WeightOnlyLinear' for m in layers)
    with torch.no_grad():
        kernel = student.teacher_forced_logits(images, instr, tokens)
    # bf16 compute in the kernel: logits close to the fake-quant reference (same prefixes)
    assert (kernel - fake).abs().max() < 0.05 * fake.abs().max()


def test_env_images_feed_the_model(small):
    """An environment image reaches both towers at their input size, each with its own
    normalisation (ImageNet mean/std for DINOv2, 0.5/0.5 for SigLIP), batch entries apart."""
    env = TabletopEnv('lift', 0)
    obs = env.observe()
    image = obs.image
    assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
    assert image.std() > 5                              # a rendered scene, not a blank frame
    px = small.pixel_values(image[None])
    assert px.shape == (1, 6, 48, 48)
    dino, siglip = small.config.vit_specs
    assert dino.image_size == siglip.image_size == 48
    x = torch.from_numpy(image.astype(np.float32) / 255).permute(2, 0, 1)[None]
    if image.shape[:2] != (48, 48):
        x = torch.nn.functional.interpolate(x, size=(48, 48), mode='bicubic',
                                            align_corners=False, antialias=True)
    for part, spec in ((px[:, :3], dino), (px[:, 3:], siglip)):
        mean = torch.tensor(spec.mean).view(1, 3, 1, 1)
        std = torch.tensor(spec.std).view(1, 3, 1, 1)
        torch.testing.assert_close(part, (x - mean) / std, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(px[:, :3], px[:, 3:])     # two normalisations, not one
    both = small.pixel_values(np.stack([image, image[::-1]]))
    torch.testing.assert_close(both[:1], px)
    assert not torch.allclose(both[1], px[0])


@pytest.mark.parametrize('method', ['qbc', 'lppd'])
def test_qlora_qbc_and_lppd_run_through_the_one_trainer(small, states, method):
    """QBC alone and LPPD for the VLA are QAILTrainer methods too: the teacher's logits are the
    only target (no L_QAIL), LPPD on the teacher's own states (D_FP) only."""
    import dataclasses

    from qail_ros.manipulation.qail_vla import VLAHooks, quantize_awq
    from qail_ros.qail.config import TrainConfig
    from qail_ros.qail.trainer import QAILTrainer
    from qail_ros.quant.lora import lora_state_dict
    n = len(states)
    mixed = dataclasses.replace(states, source=['fp'] * (n // 2) + ['expert'] * (n - n // 2))
    student = quantize_awq(small, mixed, n_calibration=8)
    hooks = VLAHooks(rank=4)
    cfg = TrainConfig(method=method, head='tokens', bits='w4a16', steps=2, batch_size=4,
                      lr=5e-2, grad_clip=1.0, log_every=1, progress=False)
    seen = []
    real = hooks.batch

    def spy(idx, step):
        b = real(idx, step)
        seen.extend(hooks.index[idx.numpy()].tolist())
        assert b.labels is None             # no L_QAIL: the labels are not even computed
        return b
    hooks.batch = spy
    result = QAILTrainer(small, cfg, mixed, hooks=hooks).train(student)
    assert [set(r) >= {'loss', 'l_qbc'} and 'l_qail' not in r for r in result.history] == \
        [True, True]
    if method == 'lppd':
        assert seen and all(mixed.source[i] == 'fp' for i in seen)
    else:
        assert any(mixed.source[i] == 'expert' for i in seen)
    assert any(t.abs().sum() > 0 for k, t in lora_state_dict(
        student.model.language_model).items() if k.endswith('lora_b'))
