"""Where models live across processes: ``trainer.strategy=none|ddp|fsdp2`` wraps or shards the
policy, reference, reward model and critic alike, and gathers them for rollouts and evaluation."""
