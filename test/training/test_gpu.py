"""The GPU tier (`pytest -m gpu`, `scripts/gpu_check.sh`): skipped without CUDA, with a reason.

CUDA bf16 training steps of the MLP, CILRS and VLA students through the one training loop;
the INT4 Llama decoder on onnxruntime-gpu; TensorRT plans of CILRS and of the VLA vision
towers. Each check is small (seconds on a GPU) and compares with the CPU / torch reference.
"""
import time
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip('torch')

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(),
                                 reason='no CUDA device: the GPU tier runs on a GPU machine '
                                        '(scripts/gpu_check.sh)')]

ROOT = Path(__file__).resolve().parents[2]


def _timed(fn):
    t0 = time.perf_counter()
    out = fn()
    torch.cuda.synchronize()
    return out, time.perf_counter() - t0


def _train(teacher, data, steps=20, batch=256):
    from qail_ros.qail.config import TrainConfig
    from qail_ros.qail.trainer import QAILTrainer
    cfg = TrainConfig(method='qail_qbc', bits='w4a4', steps=steps, batch_size=batch,
                      progress=False, calib_samples=128, log_every=1, device='cuda',
                      precision='bf16')
    res, seconds = _timed(lambda: QAILTrainer(teacher, cfg, data).train())
    assert next(res.student.parameters()).device.type == 'cuda'
    losses = [r['loss'] for r in res.history]
    assert all(np.isfinite(losses)) and losses[-1] < losses[0]
    print(f'{steps} steps in {seconds:.2f} s')


def test_mlp_student_trains_in_bf16_on_cuda():
    from qail_ros.physics.policy import MLPPolicy
    from qail_ros.qail.data import ImitationData
    torch.manual_seed(0)
    teacher = MLPPolicy(24, 6, hidden=256, layers=3)
    obs = torch.randn(4096, 24)
    teacher.set_normalization(obs)
    with torch.no_grad():
        act = teacher.eval()(obs)
    _train(teacher, ImitationData.from_sources(fp=(obs, act)), steps=40, batch=1024)


def test_cilrs_student_trains_in_bf16_on_cuda():
    from qail_ros.cilrs.model import build_model
    from qail_ros.cilrs.train import small_config
    from qail_ros.driving.qail_driving import PackedCILRS
    from qail_ros.qail.data import ImitationData
    teacher = PackedCILRS(build_model(small_config(128, 56), seed=0).fused()).eval()
    n = 256
    obs = torch.cat([torch.randint(0, 256, (n, 56 * 128 * 3)).float(), torch.rand(n, 1) * 10,
                     torch.randint(1, 7, (n, 1)).float()], dim=1)
    with torch.no_grad():
        act = teacher(obs)
    _train(teacher, ImitationData.from_sources(fp=(obs, act)), steps=10, batch=64)


def test_vla_student_trains_in_bf16_on_cuda_with_activation_checkpointing():
    pytest.importorskip('transformers')
    from qail_ros.manipulation.qail_vla import quantize_awq, train_qlora
    from qail_ros.manipulation.tasks import COLORS, PLATES, TASKS, instruction_for
    from qail_ros.manipulation.vla import Samples, SmallVLA
    teacher = SmallVLA.create(seed=0)
    g = np.random.default_rng(0)
    n = 64
    instr = [instruction_for(TASKS[i % 2], COLORS[i % 3], PLATES[i % 2]) for i in range(n)]
    data = Samples(g.integers(0, 256, (n, 48, 48, 3), dtype=np.uint8), instr,
                   g.uniform(-1, 1, (n, 7)).astype(np.float32), ['fp'] * n)
    student = quantize_awq(teacher, data, scheme='rtn')
    hist: list = []
    _, seconds = _timed(lambda: train_qlora(
        student, teacher, data, steps=8, qbc_lambda=1.0, rank=8, batch=16, lr=5e-3,
        device='cuda', precision='bf16', activation_checkpointing=True, history=hist))
    assert hist[-1]['l_qail'] < hist[0]['l_qail']
    assert next(student.model.parameters()).device.type == 'cuda'
    print(f'8 steps in {seconds:.2f} s')


def test_int4_decoder_on_onnxruntime_gpu():
    pytest.importorskip('transformers')
    from qail_ros import quant
    from qail_ros.quant.ort_llama import OrtLlamaDecoder, cuda_available
    if not cuda_available():
        pytest.skip('onnxruntime has no CUDAExecutionProvider: pip install onnxruntime-gpu')
    from transformers import LlamaConfig, LlamaForCausalLM
    cfg = LlamaConfig(vocab_size=512, hidden_size=128, intermediate_size=256,
                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
                      max_position_embeddings=256)
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg).eval()
    quant.quantize_(model, quant.WeightOnlyRTN(bits=4, granularity='group', group_size=64,
                                               exclude=['lm_head']))
    dec, seconds = _timed(lambda: OrtLlamaDecoder(model, device='cuda', accuracy_level=4))
    embeds = torch.randn(1, 12, 128, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = model(inputs_embeds=embeds).logits[0, -1]
    got = dec.step(embeds)[0]
    assert float((got.cpu() - ref).abs().max()) < 0.05 * float(ref.abs().max())


def _trt_run(plan: Path, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Run a TensorRT plan once on torch CUDA buffers (names and shapes from the plan)."""
    import tensorrt as trt
    engine = trt.Runtime(trt.Logger(trt.Logger.WARNING)).deserialize_cuda_engine(
        plan.read_bytes())
    ctx = engine.create_execution_context()
    out = {}
    for i in range(engine.num_io_tensors):
        name = engine.get_tensor_name(i)
        shape = tuple(engine.get_tensor_shape(name))
        if engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT:
            buf = torch.as_tensor(inputs[name], dtype=torch.float32).reshape(shape).cuda()
        else:
            buf = out[name] = torch.empty(shape, dtype=torch.float32, device='cuda')
        ctx.set_tensor_address(name, buf.data_ptr())
        if name not in out:
            inputs[name] = buf          # keep it alive
    stream = torch.cuda.Stream()
    ctx.execute_async_v3(stream.cuda_stream)
    stream.synchronize()
    return {k: v.cpu().numpy() for k, v in out.items()}


def test_tensorrt_cilrs_plan_matches_torch(tmp_path):
    from qail_ros.engines.tensorrt_engine import build_plan, tensorrt_available
    if not tensorrt_available():
        pytest.skip('tensorrt is not installed: pip install tensorrt')
    from qail_ros.cilrs.export import export_onnx
    from qail_ros.cilrs.model import build_model
    model = build_model(seed=1, resnet=18, height=64, width=128).fused().eval()
    onnx = export_onnx(model, tmp_path / 'cilrs.onnx')
    plan, seconds = _timed(lambda: build_plan(onnx, tmp_path / 'cilrs.plan', 'fp16'))
    image, speed = model.example_inputs(1)
    with torch.no_grad():
        ref = model(image, speed)[0].numpy()
    outs = _trt_run(plan, {'image': image.numpy(), 'speed': speed.numpy()})
    got = outs['branches'].reshape(ref.shape)
    assert np.abs(got - ref).max() < 5e-2 * max(1.0, np.abs(ref).max())


def test_tensorrt_vision_plan_matches_torch_towers(tmp_path):
    from qail_ros.engines.tensorrt_engine import tensorrt_available
    if not tensorrt_available():
        pytest.skip('tensorrt is not installed: pip install tensorrt')
    pytest.importorskip('transformers')
    from qail_ros.openvla.policy import OpenVLAPolicy
    from qail_ros.openvla.vision_engine import build_vision_engine
    tiny = ROOT / 'models' / 'openvla-tiny'
    plan = build_vision_engine(tiny, tmp_path, backend='tensorrt', precision='fp16')
    frame = np.random.default_rng(0).integers(0, 256, (224, 224, 3), dtype=np.uint8)
    ref = OpenVLAPolicy.from_pretrained(tiny, unnorm_key='bridge_orig')
    got = OpenVLAPolicy.from_pretrained(tiny, unnorm_key='bridge_orig', vision_engine=plan)
    a = ref.predict(frame, 'pick up the red block')
    b = got.predict(frame, 'pick up the red block')
    assert np.abs(a.bin_logits - b.bin_logits).max() < 5e-2
