"""The embedded demo: a class-conditional LASADGen on scikit-learn's 8x8 digits, on CPU.

    python -m lasad_jax.main --config=configs/demo.py --workdir=/tmp/demo
    # optional: the evaluation pipeline on the demo (random-weight Inception)
    python -m lasad_jax.main --config=configs/demo.py --workdir=/tmp/demo --mode=reference_stats
    python -m lasad_jax.main --config=configs/demo.py --workdir=/tmp/demo --mode=evaluate

Trains a 4-layer, 0.47M-parameter LASAD model for 1,000 steps on the 1,618 training
digits (the 8x8 images that ship with scikit-learn, 17 intensity levels, one token per
pixel; a few minutes on 2 CPU cores), reports validation bits per token on the 179
held-out digits, and writes `samples-step1000-<digest>.png` (one row per class, guidance
2.0) and `.npz` into the workdir. `--mode=sample` then draws from the checkpoint (with
other settings, into new files: the names hold the step and a digest of the settings).

Every field starts at the run's default (`default_config`: LlamaGen's recipe, listed in
docs/configuration.md); below is only what the demo changes.
"""

from ml_collections import config_dict

from lasad_jax.config import default_config


def get_config() -> config_dict.ConfigDict:
    config = default_config("generator")
    config.batch_size = 64
    config.num_steps = 1000
    config.num_epochs = 0
    config.data.update(name="digits", num_classes=10, val_fraction=0.1)
    config.tokenizer.update(name="intensity", levels=17, image_size=(8, 8), channels=1)
    config.model.update(num_layers=4, num_heads=4, dim=96, gate_rank=32)
    # lr is per 256 images: 1e-3 at batch 64.
    config.optimizer.update(lr=4e-3, schedule="cosine", warmup_steps=100, end_lr_fraction=0.1)
    config.train.update(ema_decay=0.999, log_every=50, eval_every=500, eval_batch_size=64,
                        checkpoint_every=500, keep_checkpoints=2, progress_every_secs=30.0,
                        sample_at_end=True)
    config.sample.update(per_class=10, grid_scale=6)
    # The real FID network cannot ship inside the package, so the demo's evaluation uses
    # Inception with random weights: its numbers check the pipeline and compare only
    # with each other.
    config.eval.update(num_samples=1000, part_size=500, inception="random",
                       inception_batch_size=100)
    return config
