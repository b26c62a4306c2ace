"""LASADGen on generated 16x16 grey images of ten shapes (256 tokens each), on CPU.

    python -m lasad_jax.main --config=configs/shapes.py --workdir=/tmp/shapes

The second dataset of the mixer ablation (`benchmarks/ablation.py`): the demo's model
(4 layers, dim 96, same optimizer) on 6,000 generated training images (600 held out),
grey levels quantised to 17 tokens as for the digits. Nothing is downloaded: the images
are drawn from `data.seed` (`lasad_jax/data/shapes.py`). Sequences are 4x the digits',
so a step costs about 4x more.
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
    config.data = dict(name="shapes", num_classes=10, size=16, num_train=6000, num_val=600,
                       seed=0, codes_dir="")
    config.tokenizer = dict(name="intensity", levels=17, image_size=(16, 16), channels=1)

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
