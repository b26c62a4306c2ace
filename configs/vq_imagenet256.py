"""VQ-16 tokenizer trained on ImageNet 256 with LlamaGen's recipe (DESIGN.md §3).

    python -m lasad_jax.main --config=configs/vq_imagenet256.py --workdir=/ckpt/vq16 \
        --config.data.tfds_data_dir=/data/tfds \
        --config.loss.perceptual_weights=/data/lpips_vgg.npz

Architecture: LlamaGen's VQ-16 (channels 128, multipliers 1,1,2,2,4, codebook 16384 x 8).
Loss: L2 + LPIPS (weight 1; weights converted with `python -m lasad_jax.convert.lpips`) +
codebook + 0.25 commitment + PatchGAN hinge at weight 0.5 from step 20,000. AdamW
(0.9, 0.95), weight decay 0.05, lr 1e-4 at batch 128 (this config's `lr` is per 256
images), 40 epochs. LlamaGen's training script builds plain Adam and never passes its
weight-decay flag: set `--config.optimizer.weight_decay=0` to reproduce the script rather
than the stated recipe. Augmentation here: ADM centre crop and a random flip.
"""

from ml_collections import config_dict


def get_config() -> config_dict.ConfigDict:
    config = config_dict.ConfigDict()
    config.task = "tokenizer"
    config.seed = 0
    config.batch_size = 128
    config.num_steps = 0
    config.num_epochs = 40
    # Device mesh: data x fsdp x tensor, product = device count; -1 takes what is left.
    # See README "Scaling out" (e.g. data=-1, fsdp=8 to shard weights 8 ways).
    config.mesh = dict(data=-1, fsdp=1, tensor=1)
    config.data = dict(name="tfds", val_fraction=0.0, seed=0, image_dir="", tfds_data_dir="",
                       manual_dir="")
    # commit_beta 1: the loss block applies the 0.25 commitment weight, once.
    config.vq = dict(ch=128, ch_mult=(1, 1, 2, 2, 4), encoder_res_blocks=2,
                     decoder_res_blocks=3, z_channels=256, codebook_size=16384,
                     codebook_dim=8, commit_beta=1.0)
    config.loss = dict(perceptual_weight=1.0, perceptual_weights="", disc_weight=0.5,
                       disc_start=20_000, disc_channels=64, disc_layers=3)
    config.optimizer = dict(lr=2e-4, b1=0.9, b2=0.95, eps=1e-8, weight_decay=0.05,
                            grad_clip=1.0, schedule="constant", warmup_steps=0,
                            end_lr_fraction=1.0)
    config.train = dict(image_size=256, log_every=100, eval_every=5000, eval_batch_size=64,
                        eval_images=5000, checkpoint_every=5000, keep_checkpoints=3,
                        stop_after=0, progress_every_secs=60.0, grid_scale=1)
    return config
