"""LlamaGen-layout VQ state dicts for the converter and the VQ model tests.

The expected key list is enumerated here from the architecture as LlamaGen's
`vq_model.py` builds it, independently of the converter's path -> key rule, so a wrong
rule cannot agree with itself.
"""

from __future__ import annotations

import numpy as np

from lasad_jax.tokenizers.vq import VQConfig

SMALL = VQConfig(ch=32, ch_mult=(1, 2), z_channels=16, codebook_size=64)
# Five levels as VQ-16 (factor 16) but narrow, for the tokenizer tests.
NARROW16 = VQConfig(ch=32, ch_mult=(1, 1, 1, 1, 1), encoder_res_blocks=1,
                    decoder_res_blocks=1, z_channels=8, codebook_size=64, codebook_dim=4)


def llamagen_keys(ch: int = 128, ch_mult=(1, 1, 2, 2, 4), enc_res: int = 2, dec_res: int = 3,
                  z: int = 256, n_e: int = 16384, e_dim: int = 8) -> dict[str, tuple]:
    """LlamaGen VQModel state-dict keys and shapes, walked from its constructor."""
    keys: dict[str, tuple] = {}

    def conv2d(name, cin, cout, k):
        keys[name + ".weight"], keys[name + ".bias"] = (cout, cin, k, k), (cout,)

    def gn(name, c):
        keys[name + ".weight"], keys[name + ".bias"] = (c,), (c,)

    def resnet(name, cin, cout):
        gn(name + ".norm1", cin), conv2d(name + ".conv1", cin, cout, 3)
        gn(name + ".norm2", cout), conv2d(name + ".conv2", cout, cout, 3)
        if cin != cout:
            conv2d(name + ".nin_shortcut", cin, cout, 1)

    def attn(name, c):
        gn(name + ".norm", c)
        for p in ("q", "k", "v", "proj_out"):
            conv2d(f"{name}.{p}", c, c, 1)

    def mid(name, c):
        resnet(name + ".mid.0", c, c), attn(name + ".mid.1", c), resnet(name + ".mid.2", c, c)

    n = len(ch_mult)
    conv2d("encoder.conv_in", 3, ch, 3)
    cin = ch
    for i, m in enumerate(ch_mult):
        for j in range(enc_res):
            resnet(f"encoder.conv_blocks.{i}.res.{j}", cin, ch * m)
            cin = ch * m
            if i == n - 1:
                attn(f"encoder.conv_blocks.{i}.attn.{j}", cin)
        if i != n - 1:
            conv2d(f"encoder.conv_blocks.{i}.downsample.conv", cin, cin, 3)
    mid("encoder", cin)
    gn("encoder.norm_out", cin), conv2d("encoder.conv_out", cin, z, 3)

    cin = ch * ch_mult[-1]
    conv2d("decoder.conv_in", z, cin, 3)
    mid("decoder", cin)
    for idx, i in enumerate(reversed(range(n))):
        for j in range(dec_res):
            resnet(f"decoder.conv_blocks.{idx}.res.{j}", cin, ch * ch_mult[i])
            cin = ch * ch_mult[i]
            if i == n - 1:
                attn(f"decoder.conv_blocks.{idx}.attn.{j}", cin)
        if i != 0:
            conv2d(f"decoder.conv_blocks.{idx}.upsample.conv", cin, cin, 3)
    gn("decoder.norm_out", cin), conv2d("decoder.conv_out", cin, 3, 3)

    keys["quantize.embedding.weight"] = (n_e, e_dim)
    keys["quantize.codebook_used"] = (65536,)
    conv2d("quant_conv", z, e_dim, 1), conv2d("post_quant_conv", e_dim, z, 1)
    return keys


def small_keys(cfg: VQConfig) -> dict[str, tuple]:
    return llamagen_keys(cfg.ch, cfg.ch_mult, cfg.encoder_res_blocks, cfg.decoder_res_blocks,
                         cfg.z_channels, cfg.codebook_size, cfg.codebook_dim)


def random_state_dict(cfg: VQConfig, seed: int = 0) -> dict[str, np.ndarray]:
    """Random weights at sensible scales (activations stay O(1)); raw, unnormalised codebook."""
    rng = np.random.default_rng(seed)
    sd = {}
    for k, shape in small_keys(cfg).items():
        if len(shape) == 4:
            v = rng.standard_normal(shape) / np.sqrt(np.prod(shape[1:]))
        elif ".norm" in k and k.endswith(".weight"):  # norm1, norm2, norm, norm_out
            v = 1.0 + 0.1 * rng.standard_normal(shape)
        elif k == "quantize.codebook_used":
            v = rng.integers(0, cfg.codebook_size, shape)
        else:
            v = (0.1 if k.endswith("bias") else 1.0) * rng.standard_normal(shape)
        sd[k] = np.asarray(v, np.float32)
    return sd
