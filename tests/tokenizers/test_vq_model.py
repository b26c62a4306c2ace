"""VQ-16 model layers, converted from a LlamaGen-style state dict, against independent
numpy implementations (and, when torch is present, a whole encoder/decoder pass composed
from torch.nn.functional ops)."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from tests.convert.helpers import SMALL, random_state_dict

from lasad_jax.convert.llamagen_vq import convert
from lasad_jax.tokenizers.vq import VQConfig, VQModel, abstract_model

TOL = {"rtol": 1e-4, "atol": 1e-4}


@pytest.fixture(scope="module")
def converted():
    sd = random_state_dict(SMALL, seed=3)
    graphdef, _ = nnx.split(abstract_model(SMALL))
    return sd, nnx.merge(graphdef, convert(sd, SMALL))


def nhwc(x):
    return jnp.asarray(np.transpose(x, (0, 2, 3, 1)), jnp.float32)


def nchw(y):
    return np.transpose(np.asarray(y, np.float64), (0, 3, 1, 2))


# ---- numpy references, NCHW, float64, OIHW weights straight from the state dict ----------

def np_conv(sd, name, x, stride=1, pad=((1, 1), (1, 1))):
    w, b = sd[name + ".weight"].astype(np.float64), sd[name + ".bias"].astype(np.float64)
    xp = np.pad(x, ((0, 0), (0, 0), *pad))
    kh, kw = w.shape[2:]
    oh, ow = (xp.shape[2] - kh) // stride + 1, (xp.shape[3] - kw) // stride + 1
    out = np.zeros((x.shape[0], w.shape[0], oh, ow))
    for i in range(kh):
        for j in range(kw):
            patch = xp[:, :, i:i + stride * oh:stride, j:j + stride * ow:stride]
            out += np.einsum("nchw,oc->nohw", patch, w[:, :, i, j])
    return out + b[None, :, None, None]


def np_group_norm(sd, name, x, groups=32, eps=1e-6):
    n, c, h, w = x.shape
    g = x.reshape(n, groups, -1)
    g = (g - g.mean(-1, keepdims=True)) / np.sqrt(g.var(-1, keepdims=True) + eps)
    g = g.reshape(n, c, h, w)
    return g * sd[name + ".weight"][None, :, None, None] + sd[name + ".bias"][None, :, None, None]


def np_swish(x):
    return x / (1 + np.exp(-x))


def np_attn(sd, name, x):
    n, c, h, w = x.shape
    hn = np_group_norm(sd, name + ".norm", x)
    q, k, v = (np_conv(sd, f"{name}.{p}", hn, pad=((0, 0), (0, 0))).reshape(n, c, h * w)
               for p in "qkv")
    logits = np.einsum("nci,ncj->nij", q, k) / np.sqrt(c)
    p = np.exp(logits - logits.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    out = np.einsum("nij,ncj->nci", p, v).reshape(n, c, h, w)
    return x + np_conv(sd, name + ".proj_out", out, pad=((0, 0), (0, 0)))


def np_resnet(sd, name, x):
    h = np_conv(sd, name + ".conv1", np_swish(np_group_norm(sd, name + ".norm1", x)))
    h = np_conv(sd, name + ".conv2", np_swish(np_group_norm(sd, name + ".norm2", h)))
    if name + ".nin_shortcut.weight" in sd:
        x = np_conv(sd, name + ".nin_shortcut", x, pad=((0, 0), (0, 0)))
    return x + h


def _x(shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape)


def test_downsample_pads_bottom_right_then_strides(converted):
    sd, model = converted
    x = _x((2, 32, 8, 6))
    want = np_conv(sd, "encoder.conv_blocks.0.downsample.conv", x, stride=2, pad=((0, 1), (0, 1)))
    got = model.encoder.conv_blocks[0].downsample(nhwc(x))
    assert got.shape == (2, 4, 3, 32)
    np.testing.assert_allclose(nchw(got), want, **TOL)


def test_group_norm_and_resnet_with_shortcut(converted):
    sd, model = converted
    x = 3.0 + 2.0 * _x((2, 64, 4, 3), 1)  # offset: GroupNorm must remove the mean exactly
    block = model.encoder.conv_blocks[1].res[1]
    np.testing.assert_allclose(nchw(block.norm1(nhwc(x))),
                               np_group_norm(sd, "encoder.conv_blocks.1.res.1.norm1", x), **TOL)
    x32 = _x((2, 32, 4, 3), 2)  # 32 -> 64 channels: the 1x1 nin_shortcut is used
    np.testing.assert_allclose(nchw(model.encoder.conv_blocks[1].res[0](nhwc(x32))),
                               np_resnet(sd, "encoder.conv_blocks.1.res.0", x32), **TOL)


def test_attention_block(converted):
    sd, model = converted
    x = _x((2, 64, 4, 3), 3)
    np.testing.assert_allclose(nchw(model.encoder.mid[1](nhwc(x))),
                               np_attn(sd, "encoder.mid.1", x), **TOL)
    # Attention only at the lowest resolution: encoder's last level, decoder's first.
    enc, dec = model.encoder.conv_blocks, model.decoder.conv_blocks
    assert (len(enc[0].attn), len(enc[1].attn), len(dec[0].attn), len(dec[1].attn)) == (0, 2, 3, 0)


def test_nearest_upsample_then_conv(converted):
    sd, model = converted
    x = _x((1, 64, 3, 2), 4)
    up = x.repeat(2, axis=2).repeat(2, axis=3)
    want = np_conv(sd, "decoder.conv_blocks.0.upsample.conv", up)
    np.testing.assert_allclose(nchw(model.decoder.conv_blocks[0].upsample(nhwc(x))), want, **TOL)


def test_quantizer_uses_l2_normalised_codebook_and_inputs(converted):
    sd, model = converted
    z = _x((2, 3, 4, 8), 5)
    e = sd["quantize.embedding.weight"].astype(np.float64)  # raw rows, not unit length
    e = e / np.linalg.norm(e, axis=1, keepdims=True)
    zn = z / np.linalg.norm(z, axis=-1, keepdims=True)
    want_codes = np.argmin(((zn[..., None, :] - e) ** 2).sum(-1), axis=-1)
    quant, codes, aux = model.quantize(jnp.asarray(z, jnp.float32))
    np.testing.assert_array_equal(np.asarray(codes), want_codes)
    np.testing.assert_allclose(np.asarray(quant), e[want_codes], **TOL)
    mse = np.mean((e[want_codes] - zn) ** 2)
    np.testing.assert_allclose(float(aux["codebook_loss"]), mse, **TOL)
    np.testing.assert_allclose(float(aux["commitment_loss"]), 0.25 * mse, **TOL)
    assert float(aux["codebook_usage"]) == len(np.unique(want_codes)) / SMALL.codebook_size
    np.testing.assert_allclose(np.asarray(model.quantize.lookup(codes)), e[want_codes], **TOL)
    assert "entropy_loss" not in aux  # only when asked for: a softmax over the codebook

    # The entropy term, from numpy: soft assignments at temperature 0.01 of the negative
    # squared distances; their mean entropy minus the entropy of their average.
    _, _, aux = model.quantize(jnp.asarray(z, jnp.float32), entropy=True)
    logits = -((zn.reshape(-1, 1, 8) - e) ** 2).sum(-1) / 0.01
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    mean_p = p.mean(0)
    want = (-np.mean(np.sum(p * np.log(np.maximum(p, 1e-300)), 1))
            + np.sum(mean_p * np.log(mean_p + 1e-5)))
    np.testing.assert_allclose(float(aux["entropy_loss"]), want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("affinity, want", [
    (np.zeros((6, 8)), 0.0),  # every vector undecided: both entropies log 8
    (np.tile(np.eye(8)[2] * 100.0, (6, 1)), 0.0),  # all sure of one code: both 0
    (np.eye(8) * 100.0, np.log(1 / 8 + 1e-5)),  # each sure of its own code: 0 - log 8
])
def test_codebook_entropy_loss_identities(affinity, want):
    from lasad_jax.tokenizers.vq.quantizer import codebook_entropy_loss

    got = float(codebook_entropy_loss(jnp.asarray(affinity, jnp.float32), temperature=1.0))
    np.testing.assert_allclose(got, want, atol=2e-4)


def test_training_pass_losses_and_straight_through_gradient():
    cfg = VQConfig(ch=32, ch_mult=(1,), encoder_res_blocks=1, decoder_res_blocks=1,
                   z_channels=8, codebook_size=16, codebook_dim=4)
    # Weights via the converter: eager random init compiles one program per shape (slow).
    graphdef, _ = nnx.split(abstract_model(cfg))
    model = nnx.merge(graphdef, convert(random_state_dict(cfg, seed=6), cfg))
    assert isinstance(model, VQModel)
    x = jnp.asarray(np.tanh(_x((2, 8, 8, 3), 6)), jnp.float32)

    @nnx.jit
    def step(m, x):
        def loss_fn(m):
            recon, losses = m(x)
            total = sum(losses[k] for k in ("reconstruction_loss", "codebook_loss",
                                            "commitment_loss"))
            return total, (recon, losses)
        return nnx.grad(loss_fn, has_aux=True)(m)

    grads, (recon, losses) = step(model, x)
    assert recon.shape == x.shape and set(losses) == {
        "reconstruction_loss", "codebook_loss", "commitment_loss", "codebook_usage"}
    assert all(np.isfinite(float(v)) for v in losses.values())
    # Gradient reaches the encoder through the quantizer (straight-through estimator).
    assert float(jnp.abs(grads["encoder"]["conv_in"]["kernel"][...]).sum()) > 0

    @nnx.jit
    def both_decoders(m, x):
        quant, codes, _ = m.encode(x)
        return m.decode(quant), m.decode_codes(codes)

    from_quant, from_codes = both_decoders(model, x)
    np.testing.assert_allclose(np.asarray(from_codes), np.asarray(from_quant), **TOL)


@pytest.mark.parametrize("kwargs, match", [
    ({"ch": 30}, r"divisible by norm_groups=32; got widths \[30, 60, 120\]"),
    ({"ch": 48, "ch_mult": (2, 4)}, r"got widths \[48\]"),  # the first block's width
    ({"ch_mult": ()}, r"vq\.ch_mult must be a non-empty tuple"),
    ({"codebook_size": 0}, r"vq\.codebook_size must be a positive int, got 0"),
])
def test_config_errors_name_the_field(kwargs, match):
    with pytest.raises(ValueError, match=match):
        VQConfig(**kwargs)


def test_whole_pass_matches_torch_functional(converted):
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    sd, model = converted
    t = {k: torch.from_numpy(v.astype(np.float64)) for k, v in sd.items()}

    def c(name, x, stride=1, pad=1):
        return F.conv2d(x, t[name + ".weight"], t[name + ".bias"], stride=stride, padding=pad)

    def gn(name, x):
        return F.group_norm(x, 32, t[name + ".weight"], t[name + ".bias"], eps=1e-6)

    def res(name, x):
        h = c(name + ".conv1", F.silu(gn(name + ".norm1", x)))
        h = c(name + ".conv2", F.silu(gn(name + ".norm2", h)))
        if name + ".nin_shortcut.weight" in t:
            x = c(name + ".nin_shortcut", x, pad=0)
        return x + h

    def attn(name, x):
        n, ch, hh, ww = x.shape
        h = gn(name + ".norm", x)
        q, k, v = (c(f"{name}.{p}", h, pad=0).flatten(2).transpose(1, 2) for p in "qkv")
        out = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(n, ch, hh, ww)
        return x + c(name + ".proj_out", out, pad=0)

    def mid(p, h):
        return res(p + ".mid.2", attn(p + ".mid.1", res(p + ".mid.0", h)))

    x = np.tanh(_x((2, 3, 16, 16), 7))
    h = c("encoder.conv_in", torch.from_numpy(x))
    for i in range(2):
        for j in range(2):
            h = res(f"encoder.conv_blocks.{i}.res.{j}", h)
            if i == 1:
                h = attn(f"encoder.conv_blocks.{i}.attn.{j}", h)
        if i == 0:
            h = c("encoder.conv_blocks.0.downsample.conv", F.pad(h, (0, 1, 0, 1)), stride=2, pad=0)
    h = c("encoder.conv_out", F.silu(gn("encoder.norm_out", mid("encoder", h))))
    z_torch = c("quant_conv", h, pad=0).numpy()

    z_jax = nnx.jit(lambda m, x: m.quant_conv(m.encoder(x)))(model, nhwc(x))
    np.testing.assert_allclose(nchw(z_jax), z_torch, **TOL)
    codes = np.asarray(nnx.jit(lambda m, x: m.encode(x)[1])(model, nhwc(x)))
    zn = F.normalize(torch.from_numpy(z_torch), dim=1).permute(0, 2, 3, 1).reshape(-1, 8)
    e = F.normalize(t["quantize.embedding.weight"], dim=1)
    np.testing.assert_array_equal(codes.reshape(-1), torch.cdist(zn, e).argmin(1).numpy())

    h = c("post_quant_conv", e[torch.from_numpy(codes.copy())].permute(0, 3, 1, 2), pad=0)
    h = mid("decoder", c("decoder.conv_in", h))
    for i in range(2):
        for j in range(3):
            h = res(f"decoder.conv_blocks.{i}.res.{j}", h)
            if i == 0:
                h = attn(f"decoder.conv_blocks.{i}.attn.{j}", h)
        if i == 0:
            h = F.interpolate(h, scale_factor=2.0, mode="nearest")
            h = c("decoder.conv_blocks.0.upsample.conv", h)
    img_torch = c("decoder.conv_out", F.silu(gn("decoder.norm_out", h))).numpy()
    img_jax = nnx.jit(lambda m, c: m.decode_codes(c))(model, jnp.asarray(codes))
    np.testing.assert_allclose(nchw(img_jax), img_torch, **TOL)
