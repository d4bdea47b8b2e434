"""`qail-ros train-vla`: an INT4 OpenVLA student from recorded data, with QLoRA QAIL (+QBC).

    qail-ros dataset build BAGS... -o data/d_fp            # the FP VLA's recorded rollouts
    qail-ros train-vla --teacher FP_DIR --data data/d_fp [--expert-data data/d_e] \\
        --method qail_qbc --steps 1200 --rank 8 -o runs/vla_int4
    # then: vla_policy with precision int4, int4_weights OUT/int4_backbone.safetensors,
    #       lora_weights OUT/adapters.safetensors, model_path FP_DIR

FP_DIR is an OpenVLA checkpoint directory (the teacher, frozen). Its Llama backbone is
quantized to INT4 weight-only (AWQ calibrated on the data, per output channel by default) and
frozen; LoRA adapters are trained with L_QAIL (cross-entropy on the 7 action tokens of D_QAIL
= DATA + EXPERT_DATA) and, for qail_qbc, lambda * L_QBC against the teacher's logits on the
same states (offline: s from D_QAIL, as METHOD.md says when no simulator is at hand); qbc and
lppd (the teacher's logits alone; LPPD on the states of DATA) train through the same trainer
(`QAILTrainer` with `VLAHooks`).
Writes OUT/int4_backbone.safetensors, OUT/adapters.safetensors and OUT/summary.json.
"""
from __future__ import annotations

from qail_ros.cli.common import (add_data_arguments, add_run_arguments, add_scale_arguments,
                                 start_training)

HELP = 'INT4 OpenVLA student from recorded data: AWQ + QLoRA QAIL (+QBC)'
METHODS = ('qail', 'qail_qbc', 'qbc', 'lppd')


def add_arguments(parser):
    parser.add_argument('--teacher', required=True,
                        help='FP OpenVLA checkpoint directory (config.json, safetensors, '
                             'tokenizer.json)')
    add_data_arguments(parser, required=True)
    parser.add_argument('--camera', default=None, help='image key (default: the first)')
    parser.add_argument('--unnorm-key', default=None,
                        help="the teacher's norm_stats key (default: its only one)")
    parser.add_argument('--method', default='qail_qbc', choices=METHODS,
                        help='qail (L_QAIL), qail_qbc (+ lambda L_QBC, default), qbc (L_QBC '
                             "alone), lppd (distil the teacher's logits on its own states)")
    parser.add_argument('--scheme', default='awq', choices=('awq', 'rtn'),
                        help='INT4 initialisation (default awq)')
    parser.add_argument('--granularity', default='per_channel', choices=('per_channel', 'group'))
    parser.add_argument('--group-size', type=int, default=128)
    parser.add_argument('--steps', type=int, default=1200)
    parser.add_argument('--rank', type=int, default=8, help='LoRA rank (paper: 32 at 7B)')
    parser.add_argument('--lr', type=float, default=5e-4)
    parser.add_argument('--batch-size', type=int, default=32)
    parser.add_argument('--seed', type=int, default=0)
    add_run_arguments(parser, out='output directory',
                      json_help='print the summary as one JSON object on the last line')
    add_scale_arguments(parser, checkpoint_every=200)
    parser.add_argument('--activation-checkpointing', action='store_true',
                        help="recompute the Llama's activations in the backward (less memory)")


def main(args) -> int:
    import json
    from pathlib import Path

    import torch

    from qail_ros.report import emit_json, table
    from qail_ros.manipulation.qail_vla import quantize_awq, train_qlora
    from qail_ros.manipulation.vla import Samples, SmallVLA, samples_from_dataset
    from qail_ros.quant import save_quantized
    from qail_ros.quant.lora import save_lora

    start_training(args)
    torch.manual_seed(args.seed)
    teacher = SmallVLA.load(args.teacher, unnorm_key=args.unnorm_key)
    teacher.model.eval()
    parts = [samples_from_dataset(args.data, args.split, camera=args.camera, source='fp')]
    if args.expert_data:
        parts.append(samples_from_dataset(args.expert_data, args.split, camera=args.camera,
                                          source='expert'))
    data = Samples.concat(parts)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    from qail_ros.training.distributed import TrainingInterrupted, setup, teardown
    dist = setup(args.device or 'cpu')
    # every rank quantizes the same frozen INT4 backbone (deterministic AWQ on the same data)
    student = quantize_awq(teacher, data, scheme=args.scheme, granularity=args.granularity,
                           group_size=args.group_size)
    backbone = out / 'int4_backbone.safetensors'
    if dist.is_main:
        backbone = save_quantized(student.model.language_model, backbone)
    try:
        info = train_qlora(student, teacher, data, steps=args.steps, rank=args.rank, lr=args.lr,
                           batch=args.batch_size, seed=args.seed,
                           method='qat' if args.method == 'qail' else args.method,
                           qbc_lambda=1.0, tasks=(),
                           device=args.device or 'cpu',
                           precision=args.precision or 'fp32', grad_accum=args.grad_accum or 1,
                           activation_checkpointing=args.activation_checkpointing,
                           checkpoint_dir=str(out / 'checkpoints'),
                           checkpoint_every=args.checkpoint_every, resume=args.resume)
    except TrainingInterrupted as exc:
        if dist.is_main:
            print(f'qail-ros train-vla: {exc}')
        teardown()
        return 130
    if not dist.is_main:         # under torchrun: rank 0 alone writes
        teardown()
        return 0
    student.model.cpu()
    adapters = save_lora(student.model.language_model, out / 'adapters.safetensors')
    summary = {'method': args.method, 'teacher': str(args.teacher), 'data': str(args.data),
               'expert_data': args.expert_data, 'samples': len(data), 'scheme': args.scheme,
               **info, 'int4_weights': str(backbone), 'lora_weights': str(adapters)}
    (out / 'summary.json').write_text(json.dumps(summary, indent=2) + '\n')
    table(f'qail-ros train-vla -> {out}', ['method', 'samples', 'steps', 'rank', 'qail', 'qbc',
                                           'train_s'],
          [[args.method, len(data), args.steps, args.rank, info['final_qail'],
            info['final_qbc'] if info['final_qbc'] is not None else '-', info['seconds']]])
    print(f'run it: vla_policy model_path:={args.teacher} precision:=int4 '
          f'int4_weights:={backbone} lora_weights:={adapters}')
    if args.json:
        emit_json(summary)
    teardown()
    return 0
