"""LASADGen-L on VQ-16 codes of ImageNet 256x256 (16x16 tokens), LlamaGen's GPT-L recipe.

    # once: ImageNet -> VQ-16 codes (ten crops and their mirrors per training image)
    python -m lasad_jax.main --config=configs/imagenet256.py --workdir=/tmp/unused --mode=extract \
        --config.data.tfds_data_dir=/data/tfds --config.data.codes_dir=/data/in256_codes \
        --config.tokenizer.checkpoint=/data/vq_ds16_c2i
    # then train
    python -m lasad_jax.main --config=configs/imagenet256.py --workdir=/ckpt/lasad_l \
        --config.data.codes_dir=/data/in256_codes --config.tokenizer.checkpoint=/data/vq_ds16_c2i
    # then evaluate: 50k samples, FID / sFID / IS / precision / recall (ADM protocol)
    python -m lasad_jax.main --config=configs/imagenet256.py --workdir=/ckpt/lasad_l \
        --mode=evaluate --config.tokenizer.checkpoint=/data/vq_ds16_c2i \
        --config.eval.inception=/data/inception_fid.npz \
        --config.eval.reference=/data/VIRTUAL_imagenet256_labeled.npz

Recipe (LlamaGen, arXiv 2406.06525): AdamW betas (0.9, 0.95), weight decay 0.05 on >= 2-D
parameters, learning rate 1e-4 per 256 images held constant, gradient clipping 1.0, bf16
compute, 300 epochs of batch 256, class dropout 0.1, classifier-free guidance 2.0 at
sampling. The trainer reads codes extracted once by `--mode=extract` (one of ten crops
and mirrors drawn per image per epoch); it stops at once, naming the field, when they or
the tokenizer weights (`tokenizer.checkpoint`, converted from LlamaGen's
`vq_ds16_c2i.pt`) are missing. With `data.image_source="imagefolder"` and
`data.image_dir=ROOT` (`ROOT/train/<class>/*.JPEG`) extraction reads a folder instead.
"""

from ml_collections import config_dict

IMAGENET_TRAIN_IMAGES = 1_281_167


def get_config() -> config_dict.ConfigDict:
    config = config_dict.ConfigDict()
    config.seed = 0
    config.batch_size = 256
    # 300 epochs of the 1.28M training images, whatever number of augmented views
    # (flips, ten crops) the codes directory holds per image.
    config.num_epochs = 300
    config.num_steps = -(-300 * IMAGENET_TRAIN_IMAGES // 256)

    # Images -> codes once (`--mode=extract`), then training reads the codes.
    # Device mesh: data x fsdp x tensor, product = device count; -1 takes what is left.
    # FSDP over every device shards weights, Adam moments and EMA (needed from XL up);
    # see README "Scaling out" for other layouts.
    config.mesh = dict(data=1, fsdp=-1, tensor=1)
    config.data = dict(
        name="extracted", num_classes=1000, codes_dir="", val_fraction=0.0, seed=0,
        image_source="tfds", image_dir="", tfds_data_dir="", manual_dir="",
        augment="tencrop", val_augment="none", extract_splits=("train", "val"),
        shard_size=10_000, extract_batch_size=64, skip_corrupt=False,
    )
    config.tokenizer = dict(name="vq16", image_size=(256, 256), codebook_size=16384,
                            checkpoint="", levels=0, channels=3)

    config.model = dict(
        preset="L", num_layers=None, num_heads=None, dim=None,
        mixer="lasad", feature_map="silu", gate="sigmoid", gate_rank=64,
        pos_encoding="rope2d", dtype="bfloat16", impl="auto", chunk_size=None,
    )
    config.optimizer = dict(
        lr=1e-4,  # per 256 images
        b1=0.9, b2=0.95, eps=1e-8, weight_decay=0.05, grad_clip=1.0,
        schedule="constant", warmup_steps=0, end_lr_fraction=1.0,
    )
    config.train = dict(
        class_dropout=0.1, ema_decay=0.9999, log_every=100, eval_every=-1,
        eval_batch_size=256, checkpoint_every=5000, keep_checkpoints=3,
        stop_after=0, progress_every_secs=60.0, sample_at_end=False,
        # A non-finite loss or gradient: "halt" stops before anything is saved; "skip"
        # drops that update, logs it with its step and goes on.
        nonfinite="halt",
    )
    # ADM evaluation: 50 images for each of the 1,000 classes.
    config.sample = dict(
        name="samples", classes=(), per_class=50, batch_size=64, cfg_scale=2.0,
        temperature=1.0, top_k=0, top_p=1.0, seed=0, use_ema=True, grid_scale=1,
    )
    # ADM protocol (README "Evaluation"): 50k samples against ADM's reference batch, with
    # the converted FID Inception weights.
    config.eval = dict(
        name="eval", num_samples=50_000, seed=0, part_size=5000, inception="",
        preprocess="adm", reference="", reference_split="train", reference_limit=0,
        inception_batch_size=200,
    )
    return config
