"""The embedded demo: a class-conditional LASADGen on scikit-learn's 8x8 digits, on CPU.

    python -m lasad_jax.main --config=configs/demo.py --workdir=/tmp/demo
    # optional: the evaluation pipeline on the demo (random-weight Inception)
    python -m lasad_jax.main --config=configs/demo.py --workdir=/tmp/demo --mode=reference_stats
    python -m lasad_jax.main --config=configs/demo.py --workdir=/tmp/demo --mode=evaluate

Trains a 4-layer, 0.47M-parameter LASAD model for 1,000 steps on the 1,618 training
digits (the 8x8 images that ship with scikit-learn, 17 intensity levels, one token per
pixel; about 3 minutes on 2 CPU cores), reports validation bits per token on the 179
held-out digits, and writes `samples.png` (one row per class, guidance 2.0) and
`samples.npz` into the workdir. `--mode=sample` then draws again from the checkpoint.
"""

from ml_collections import config_dict


def get_config() -> config_dict.ConfigDict:
    config = config_dict.ConfigDict()
    config.seed = 0
    config.batch_size = 64
    config.num_steps = 1000
    config.num_epochs = 0

    # Device mesh: data x fsdp x tensor, product = device count; -1 takes what is left.
    # See README "Scaling out" (e.g. data=-1, fsdp=8 to shard weights 8 ways).
    config.mesh = dict(data=-1, fsdp=1, tensor=1)
    config.data = dict(name="digits", num_classes=10, val_fraction=0.1, seed=0, codes_dir="")
    config.tokenizer = dict(name="intensity", levels=17, image_size=(8, 8), channels=1)

    config.model = dict(
        preset="", num_layers=4, num_heads=4, dim=96,
        mixer="lasad", feature_map="silu", gate="sigmoid", gate_rank=32,
        pos_encoding="rope2d", dtype="float32", impl="auto", chunk_size=None,
    )
    config.optimizer = dict(
        lr=4e-3,  # per 256 images: 1e-3 at batch 64
        b1=0.9, b2=0.95, eps=1e-8, weight_decay=0.05, grad_clip=1.0,
        schedule="cosine", warmup_steps=100, end_lr_fraction=0.1,
    )
    config.train = dict(
        class_dropout=0.1, ema_decay=0.999, log_every=50, eval_every=500, eval_batch_size=64,
        checkpoint_every=500, keep_checkpoints=2, stop_after=0, progress_every_secs=30.0,
        sample_at_end=True,
        # A non-finite loss or gradient: "halt" stops before anything is saved; "skip"
        # drops that update, logs it with its step and goes on.
        nonfinite="halt",
    )
    config.sample = dict(
        name="samples", classes=(), per_class=10, batch_size=64, cfg_scale=2.0,
        temperature=1.0, top_k=0, top_p=1.0, seed=0, use_ema=True, grid_scale=6,
    )
    # --mode=reference_stats, then --mode=evaluate (README "Evaluation"). The real FID
    # network cannot ship inside the package, so the demo uses Inception with random
    # weights: its numbers check the pipeline and compare only with each other.
    config.eval = dict(
        name="eval", num_samples=1000, seed=0, part_size=500, inception="random",
        preprocess="adm", reference="", reference_split="train", reference_limit=0,
        inception_batch_size=100,
    )
    return config
