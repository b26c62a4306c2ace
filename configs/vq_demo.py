"""Tokenizer demo: a small VQ tokenizer trained on the embedded digits, on CPU.

    python -m lasad_jax.main --config=configs/vq_demo.py --workdir=/tmp/vq_demo

The LlamaGen VQ architecture shrunk (channels 32, two downsamplings: 32 px -> 8 x 8 codes,
codebook 256) on scikit-learn's digits upscaled to 32 px RGB. Same losses as the ImageNet
recipe except LPIPS (its VGG weights cannot ship inside a package; `loss.perceptual_weight`
is 0 here), with the PatchGAN switched on half-way. Writes `reconstructions.png` and
exports the tokenizer to `workdir/tokenizer/`. About 3 minutes on 2 CPU cores; validation
PSNR 26.2 dB at step 300 and 25.6 dB at step 600 (after the GAN starts), with 45% of the
codebook in use.
"""

from ml_collections import config_dict


def get_config() -> config_dict.ConfigDict:
    config = config_dict.ConfigDict()
    config.task = "tokenizer"
    config.seed = 0
    config.batch_size = 32
    config.num_steps = 600
    config.num_epochs = 0
    # Device mesh: data x fsdp x tensor, product = device count; -1 takes what is left.
    # See README "Scaling out" (e.g. data=-1, fsdp=8 to shard weights 8 ways).
    config.mesh = dict(data=-1, fsdp=1, tensor=1)
    config.data = dict(name="digits", val_fraction=0.1, seed=0, image_dir="", tfds_data_dir="",
                       manual_dir="")
    # commit_beta 1: the loss block applies the 0.25 commitment weight, once.
    config.vq = dict(ch=32, ch_mult=(1, 2, 2), encoder_res_blocks=1, decoder_res_blocks=1,
                     z_channels=64, codebook_size=256, codebook_dim=8, commit_beta=1.0)
    config.loss = dict(perceptual_weight=0.0, perceptual_weights="", disc_weight=0.5,
                       disc_start=300, disc_channels=16, disc_layers=2)
    config.optimizer = dict(lr=8e-3,  # per 256 images: 1e-3 at batch 32
                            b1=0.9, b2=0.95, eps=1e-8, weight_decay=0.05,
                            grad_clip=1.0, schedule="constant", warmup_steps=50,
                            end_lr_fraction=1.0)
    config.train = dict(image_size=32, log_every=50, eval_every=300, eval_batch_size=64,
                        eval_images=179, checkpoint_every=300, keep_checkpoints=2,
                        stop_after=0, progress_every_secs=30.0, grid_scale=3)
    return config
