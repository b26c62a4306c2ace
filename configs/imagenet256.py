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

The recipe is the run's defaults (`default_config`, docs/configuration.md), LlamaGen's
(arXiv 2406.06525): AdamW betas (0.9, 0.95), weight decay 0.05 on >= 2-D parameters,
learning rate 1e-4 per 256 images held constant, gradient clipping 1.0, 300 epochs of
batch 256, class dropout 0.1, EMA 0.9999, classifier-free guidance 2.0, VQ-16 codes of
extracted ImageNet (one of ten crops and mirrors drawn per image per epoch). This file
adds only the model size, bf16 compute and FSDP over every device. The run length is
left to the trainer (`num_steps=0`): it counts the extracted training images (not their
views) and runs `num_epochs` passes at `batch_size`, so `--config.batch_size=1024` or
`--config.num_epochs=100` changes the step count with them (300 epochs of 1,281,167
images: 1,501,368 steps at batch 256, 375,342 at 1024). A run stops at once, naming
the field, when the codes are missing, or when the tokenizer weights
(`tokenizer.checkpoint`, converted from LlamaGen's `vq_ds16_c2i.pt`) are missing for a
mode that encodes or decodes images: extract, sample, evaluate, or training with
`train.sample_at_end`. Training alone reads only the codes. With
`data.image_source="imagefolder"` and `data.image_dir=ROOT` (`ROOT/train/<class>/*.JPEG`)
extraction reads a folder instead. On fewer or smaller devices than batch 256 needs
(one 80 GB GPU, say), `--config.train.grad_accum_steps=4` keeps the batch and the recipe
and runs each step as four micro-batches of 64 (docs/training_imagenet.md).
"""

from ml_collections import config_dict

from lasad_jax.config import default_config


def get_config() -> config_dict.ConfigDict:
    config = default_config("generator")
    # No num_steps here: a step count computed now would keep the batch size and epochs
    # of this file and ignore their overrides; the trainer derives it from both (0).
    # FSDP over every device shards weights, Adam moments and EMA (needed from XL up).
    config.mesh.update(data=1, fsdp=-1)
    config.model.update(preset="L", dtype="bfloat16")
    return config
