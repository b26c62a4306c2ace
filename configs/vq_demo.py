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

from lasad_jax.config import default_config


def get_config() -> config_dict.ConfigDict:
    config = default_config("tokenizer")  # LlamaGen's VQ-16 recipe (configs/vq_imagenet256.py)
    config.batch_size = 32
    config.num_steps = 600
    config.num_epochs = 0
    config.data.update(name="digits", val_fraction=0.1)
    config.vq.update(ch=32, ch_mult=(1, 2, 2), encoder_res_blocks=1, decoder_res_blocks=1,
                     z_channels=64, codebook_size=256)
    config.loss.update(perceptual_weight=0.0, disc_start=300, disc_channels=16, disc_layers=2)
    # lr is per 256 images: 1e-3 at batch 32.
    config.optimizer.update(lr=8e-3, warmup_steps=50)
    config.train.update(image_size=32, log_every=50, eval_every=300, eval_images=179,
                        checkpoint_every=300, keep_checkpoints=2, progress_every_secs=30.0,
                        grid_scale=3)
    return config
