"""VQ-16 tokenizer trained on ImageNet 256 with LlamaGen's recipe.

    python -m lasad_jax.main --config=configs/vq_imagenet256.py --workdir=/ckpt/vq16 \
        --config.data.tfds_data_dir=/data/tfds \
        --config.loss.perceptual_weights=/data/lpips_vgg.npz

The recipe is the tokenizer run's defaults (`default_config("tokenizer")`, listed in
docs/configuration.md). Architecture: LlamaGen's VQ-16 (channels 128, multipliers
1,1,2,2,4, codebook 16384 x 8). Loss: L2 + LPIPS (weight 1; weights converted with
`python -m lasad_jax.convert.lpips`) + codebook + 0.25 commitment + PatchGAN hinge at
weight 0.5 from step 20,000. AdamW (0.9, 0.95), weight decay 0.05, lr 1e-4 at batch 128
(`optimizer.lr` is per 256 images), 40 epochs. LlamaGen's training script builds plain
Adam and never passes its weight-decay flag: set `--config.optimizer.weight_decay=0` to
reproduce the script rather than the stated recipe. Augmentation here: ADM centre crop
and a random flip.
"""

from ml_collections import config_dict

from lasad_jax.config import default_config


def get_config() -> config_dict.ConfigDict:
    return default_config("tokenizer")
