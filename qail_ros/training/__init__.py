"""Training past one process: torchrun data parallelism, precision, checkpoint and resume.

Every qail_ros trainer (`QAILTrainer` for the MLP, CILRS and VLA students, the physics, CILRS
and VLA behaviour cloning) runs its steps through `qail_ros.training.bc.fit`, the one
supervised loop (optimizer, schedule, global batches), which runs
`qail_ros.training.distributed.TrainLoop`: one module owns the process group,
DistributedDataParallel, the global batch and its shards, autocast, gradient accumulation,
checkpoints and stop signals. `qail_ros.training.logs.show_progress` is how a command shows
the trainers' progress (module loggers). See docs/training.md.

Importing this package loads no torch.
"""
