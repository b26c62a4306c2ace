"""Training: the optimizer, pure train/eval steps, checkpoints, metrics, and the host loop
that both training tasks (the generator and the VQ tokenizer) run."""
