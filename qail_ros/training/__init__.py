"""Training past one process: torchrun data parallelism, precision, checkpoint and resume.

Every qail_ros trainer (`QAILTrainer`, the VLA QLoRA and BC loops, the physics and CILRS
behaviour cloning) runs its steps through `qail_ros.training.distributed.TrainLoop`, so one
module owns the process group, DistributedDataParallel, the global batch and its shards,
autocast, gradient accumulation, checkpoints and stop signals. See docs/training.md.

Importing this package loads no torch.
"""
