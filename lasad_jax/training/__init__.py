"""Training: optimizer, pure train/eval steps, checkpoints, metrics and the loop."""
