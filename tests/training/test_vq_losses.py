"""VQ tokenizer training losses: GAN losses, schedule, totals, LPIPS, converter, PatchGAN."""

from __future__ import annotations

import importlib.util
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from lasad_jax.convert import lpips as convert
from lasad_jax.training.vq import (
    LPIPS,
    PatchGANDiscriminator,
    VQLossConfig,
    adversarial_weight,
    build_loss_modules,
    build_perceptual,
    discriminator_loss,
    generator_loss,
    hinge_d_loss,
    hinge_gen_loss,
    load_lpips,
    non_saturating_gen_loss,
    reconstruction_loss,
    vanilla_d_loss,
)
from lasad_jax.training.vq.perceptual import (
    LPIPS_SCALE,
    LPIPS_SHIFT,
    VGG16_STAGES,
    stage_distance,
    unit_normalize,
)
from lasad_jax.validation import block_from_mapping

HAS_TORCH = importlib.util.find_spec("torch") is not None
TINY_STAGES = ((4, 4), (8, 8), (8, 8, 8), (8, 8, 8), (8, 8, 8))


def tiny_lpips(seed: int = 0) -> LPIPS:
    return LPIPS(TINY_STAGES, seed=seed)


# One compilation per call site instead of one per eager op (CPU compile time dominates).
lpips_fn = nnx.jit(lambda model, a, b: model(a, b))


def images(seed: int, n: int = 2, size: int = 32) -> jax.Array:
    return jnp.asarray(np.random.default_rng(seed).uniform(-1, 1, (n, size, size, 3)), jnp.float32)


# --- GAN losses, schedule, totals -------------------------------------------------------

def test_gan_losses_hand_values():
    real = jnp.array([2.0, 0.5, -1.0])
    fake = jnp.array([-2.0, 0.0, 0.5])
    # relu(1 - real) = [0, .5, 2], relu(1 + fake) = [0, 1, 1.5]: 0.5 * (2.5/3 + 2.5/3)
    assert float(hinge_d_loss(real, fake)) == pytest.approx(5.0 / 6.0, abs=1e-6)
    assert float(hinge_gen_loss(fake)) == pytest.approx(0.5, abs=1e-6)
    zeros = jnp.zeros((4,))
    assert float(vanilla_d_loss(zeros, zeros)) == pytest.approx(np.log(2.0), abs=1e-6)
    assert float(non_saturating_gen_loss(zeros)) == pytest.approx(np.log(2.0), abs=1e-6)
    assert float(non_saturating_gen_loss(jnp.array([40.0]))) == pytest.approx(0.0, abs=1e-6)
    x, y = jnp.zeros((1, 2, 2, 3)), jnp.full((1, 2, 2, 3), 0.5)
    assert float(reconstruction_loss(x, y, "l2")) == pytest.approx(0.25)
    assert float(reconstruction_loss(x, y, "l1")) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="loss.reconstruction_loss"):
        reconstruction_loss(x, y, "huber")


def test_adversarial_weight_schedule():
    for step, want in ((0, 0.0), (19999, 0.0), (20000, 0.5), (20001, 0.5), (10**6, 0.5)):
        assert float(adversarial_weight(step, 20000, 0.5)) == want
    jitted = jax.jit(lambda s: adversarial_weight(s, 20000, 0.5))
    assert [float(jitted(jnp.int32(s))) for s in (19999, 20000)] == [0.0, 0.5]
    cfg = VQLossConfig()  # LlamaGen's vq_train.py defaults
    assert (cfg.disc_start, cfg.disc_weight, cfg.disc_loss, cfg.gen_loss) == (
        20000, 0.5, "hinge", "hinge")


def test_generator_loss_is_weighted_sum():
    cfg = VQLossConfig(entropy_weight=0.5)
    x, x_hat = jnp.zeros((2, 4, 4, 3)), jnp.full((2, 4, 4, 3), 0.5)   # L2 = 0.25
    kw = {"codebook_loss": 0.1, "commitment_loss": 0.2, "entropy_loss": 0.3,
          "codebook_usage": 0.7, "perceptual": jnp.array([0.2, 0.4]),
          "logits_fake": jnp.array([-1.0, -3.0])}
    # 1.0*0.25 + 1.0*0.3 + 1.0*0.1 + 0.25*0.2 + 0.5*0.3 = 0.85; hinge gen = 2.0
    before, m = generator_loss(cfg, 19999, x, x_hat, **kw)
    after, m_after = generator_loss(cfg, 20000, x, x_hat, **kw)
    assert float(before) == pytest.approx(0.85, abs=1e-6)
    assert float(after) == pytest.approx(0.85 + 0.5 * 2.0, abs=1e-6)
    want = {"rec_loss": 0.25, "perceptual_loss": 0.3, "gen_adv_loss": 2.0, "codebook_loss": 0.1,
            "commitment_loss": 0.2, "entropy_loss": 0.3, "codebook_usage": 0.7, "adv_weight": 0.0}
    for k, v in want.items():
        assert float(m[k]) == pytest.approx(v, abs=1e-6), k
    assert float(m_after["adv_weight"]) == 0.5 and float(m_after["loss"]) == float(after)
    no_adv, _ = generator_loss(cfg, 0, x, x_hat, **{**kw, "logits_fake": None})
    assert float(no_adv) == pytest.approx(0.85, abs=1e-6)
    with pytest.raises(ValueError, match="perceptual"):
        generator_loss(cfg, 0, x, x_hat, codebook_loss=0.0, commitment_loss=0.0)
    l1 = VQLossConfig(reconstruction_loss="l1", perceptual_weight=0.0)
    total, _ = generator_loss(l1, 0, x, x_hat, codebook_loss=0.0, commitment_loss=0.0)
    assert float(total) == pytest.approx(0.5)


def test_discriminator_loss_schedule():
    cfg = VQLossConfig()
    real, fake = jnp.array([2.0, 0.5, -1.0]), jnp.array([-2.0, 0.0, 0.5])
    assert float(discriminator_loss(cfg, 100, real, fake)[0]) == 0.0
    total, m = discriminator_loss(cfg, 20000, real, fake)
    assert float(total) == pytest.approx(0.5 * 5.0 / 6.0, abs=1e-6)
    assert float(m["logits_fake"]) == pytest.approx(-0.5)


def test_loss_config_errors(tmp_path):
    with pytest.raises(ValueError, match="loss.disc_loss"):
        VQLossConfig(disc_loss="wgan")
    with pytest.raises(ValueError, match="loss.disc_weight"):
        VQLossConfig(disc_weight=-1.0)
    with pytest.raises(ValueError, match="unknown fields.*perceptual_wieght"):
        block_from_mapping(VQLossConfig, "loss", {"perceptual_wieght": 0.0})
    assert block_from_mapping(VQLossConfig, "loss", {"disc_start": 5}).disc_start == 5
    assert build_perceptual(0.0, "") is None
    for path in ("", None):
        with pytest.raises(ValueError,
                           match=r"loss\.perceptual_weights.*lasad_jax\.convert\.lpips"):
            build_perceptual(1.0, path)
    with pytest.raises(ValueError, match="does not exist.*lasad_jax.convert.lpips"):
        build_perceptual(1.0, str(tmp_path / "missing.npz"))
    lpips, disc = nnx.eval_shape(lambda: build_loss_modules(
        VQLossConfig(perceptual_weight=0.0, disc_channels=4), nnx.Rngs(0)))
    assert lpips is None and isinstance(disc, PatchGANDiscriminator)


# --- LPIPS ------------------------------------------------------------------------------

def test_lpips_identity_symmetry_positive():
    model = tiny_lpips()
    a, b = images(1), images(2)
    d_aa, d_ab, d_ba = lpips_fn(model, a, a), lpips_fn(model, a, b), lpips_fn(model, b, a)
    assert d_aa.shape == (2,)
    np.testing.assert_allclose(d_aa, 0.0, atol=1e-7)
    np.testing.assert_allclose(d_ab, d_ba, rtol=1e-6)
    assert np.all(np.asarray(d_ab) > 0)
    grad = jax.jit(jax.grad(lambda y: model(a, y).sum()))(b)
    assert np.all(np.isfinite(grad)) and np.any(grad != 0)
    # All-zero feature vectors (dead ReLU pixels) must not give NaN gradients.
    g0 = jax.grad(lambda f: unit_normalize(f).sum())(jnp.zeros((1, 2, 2, 4)))
    assert np.all(np.isfinite(g0))
    lpips_params = nnx.state(model, nnx.Param)
    assert not jax.tree.leaves(lpips_params)  # frozen weights are not nnx.Param


def test_stage_distance_matches_numpy():
    rng = np.random.default_rng(3)
    f0, f1 = rng.normal(size=(2, 2, 5, 6, 16))
    lin = rng.uniform(0, 1, 16)

    def np_norm(f):
        return f / (np.sqrt(np.sum(f * f, axis=-1, keepdims=True)) + 1e-10)

    np.testing.assert_allclose(unit_normalize(jnp.asarray(f0, jnp.float32)), np_norm(f0), atol=1e-6)
    want = np.mean(np.sum((np_norm(f0) - np_norm(f1)) ** 2 * lin, axis=-1), axis=(1, 2))
    got = stage_distance(*(jnp.asarray(v, jnp.float32) for v in (f0, f1, lin)))
    np.testing.assert_allclose(got, want, atol=1e-5)


def fake_torch_state(rng: np.random.Generator):
    """State dicts with torchvision's / LPIPS' real key names and shapes (numpy)."""
    vgg, cin = {}, 3
    for indices, widths in zip(convert.VGG16_CONV_INDICES, VGG16_STAGES):
        for idx, cout in zip(indices, widths):
            vgg[f"features.{idx}.weight"] = (rng.standard_normal((cout, cin, 3, 3), np.float32)
                                             * np.sqrt(2.0 / (9 * cin))).astype(np.float32)
            vgg[f"features.{idx}.bias"] = np.zeros((cout,), np.float32)
            cin = cout
    vgg["classifier.6.weight"] = np.zeros((1000, 4096), np.float32)  # ignored
    lin = {f"lin{s}.model.1.weight": rng.uniform(0, 0.1, (1, w[-1], 1, 1)).astype(np.float32)
           for s, w in enumerate(VGG16_STAGES)}
    return vgg, lin


def test_converter_roundtrip_and_shape_errors(tmp_path):
    vgg, lin = fake_torch_state(np.random.default_rng(0))
    path = tmp_path / "lpips_vgg.npz"
    convert.save_lpips_npz(convert.convert_lpips(vgg, lin), path)
    model = load_lpips(path)
    np.testing.assert_array_equal(model.convs[2].kernel[...],
                                  vgg["features.5.weight"].transpose(2, 3, 1, 0))
    np.testing.assert_array_equal(model.lins[4][...], lin["lin4.model.1.weight"].reshape(512))
    d = lpips_fn(model, images(1, 1), images(2, 1))
    assert d.shape == (1,) and np.isfinite(d).all() and float(d[0]) > 0

    bad = {**vgg, "features.7.weight": np.zeros((128, 128, 3, 2), np.float32)}
    with pytest.raises(ValueError, match=r"features\.7\.weight.*\(128, 128, 3, 3\)"):
        convert.convert_lpips(bad, lin)
    with pytest.raises(KeyError, match=r"lin3\.model\.1\.weight"):
        convert.convert_lpips(vgg, {k: v for k, v in lin.items() if not k.startswith("lin3")})
    with pytest.raises(ValueError, match="negative"):
        convert.convert_lpips(vgg, {**lin, "lin0.model.1.weight": -lin["lin0.model.1.weight"]})
    with np.load(path) as data:
        arrays = dict(data)
    arrays["lin2"] = np.zeros((255,), np.float32)
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(ValueError, match=r"lin2 has shape \(255,\)"):
        load_lpips(tmp_path / "bad.npz")
    with pytest.raises(FileNotFoundError, match="lasad_jax.convert.lpips"):
        load_lpips(tmp_path / "none.npz")


@pytest.mark.skipif(not HAS_TORCH, reason="needs torch")
def test_convert_cli_reads_pth(tmp_path):
    import torch

    vgg, lin = fake_torch_state(np.random.default_rng(1))
    torch.save({k: torch.from_numpy(v) for k, v in vgg.items()}, tmp_path / "vgg16.pth")
    torch.save({k: torch.from_numpy(v) for k, v in lin.items()}, tmp_path / "vgg.pth")
    out = tmp_path / "lpips"  # no suffix: written to exactly this path
    convert.main(["--vgg16", str(tmp_path / "vgg16.pth"), "--lin", str(tmp_path / "vgg.pth"),
                  "--out", str(out)])
    model = load_lpips(out)
    np.testing.assert_array_equal(model.convs[12].bias[...], vgg["features.28.bias"])


def test_reading_pth_without_torch_names_the_fix(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "torch", None)
    with pytest.raises(ImportError, match="pip install torch"):
        convert.read_torch_state_dict(tmp_path / "vgg.pth")


@pytest.mark.skipif(not HAS_TORCH, reason="needs torch")
def test_lpips_matches_torch():
    import torch
    import torch.nn.functional as F

    model = tiny_lpips(1)
    a, b = images(4), images(5)
    def to_t(x):
        return torch.from_numpy(np.array(x)).permute(0, 3, 1, 2).double()
    kernels = [torch.from_numpy(np.array(c.kernel[...])).permute(3, 2, 0, 1).double()
               for c in model.convs]
    biases = [torch.from_numpy(np.array(c.bias[...])).double() for c in model.convs]
    shift = torch.tensor(LPIPS_SHIFT).double()[None, :, None, None]
    scale = torch.tensor(LPIPS_SCALE).double()[None, :, None, None]

    def torch_feats(x):
        outs, i, h = [], 0, (x - shift) / scale
        for s, widths in enumerate(TINY_STAGES):
            if s:
                h = F.max_pool2d(h, 2, 2)
            for _ in widths:
                h = F.relu(F.conv2d(h, kernels[i], biases[i], padding=1))
                i += 1
            outs.append(h)
        return outs

    # One conv+relu stage (stage 1: pool, conv, relu, conv, relu).
    ours = nnx.jit(lambda m, x: m.features(x))(
        model, (a - jnp.asarray(LPIPS_SHIFT)) / jnp.asarray(LPIPS_SCALE))
    ref = torch_feats(to_t(a))
    np.testing.assert_allclose(np.asarray(ours[1]), ref[1].permute(0, 2, 3, 1).numpy(), atol=1e-4)
    # The whole distance, as LlamaGen's lpips.py computes it.
    total = 0
    for f0, f1, lin in zip(torch_feats(to_t(a)), torch_feats(to_t(b)), model.lins):
        n0 = f0 / (torch.sqrt(torch.sum(f0 ** 2, dim=1, keepdim=True)) + 1e-10)
        n1 = f1 / (torch.sqrt(torch.sum(f1 ** 2, dim=1, keepdim=True)) + 1e-10)
        w = torch.from_numpy(np.array(lin[...])).double()[None, :, None, None]
        total = total + F.conv2d((n0 - n1) ** 2, w).mean([2, 3]).flatten()
    np.testing.assert_allclose(np.asarray(lpips_fn(model, a, b)), total.numpy(), rtol=1e-4)


# --- PatchGAN discriminator -------------------------------------------------------------

@pytest.mark.slow
def test_discriminator_shape_size_and_gradients():
    real, fake = images(6, 4), images(7, 4)
    def shape(**kw):
        return nnx.eval_shape(lambda: PatchGANDiscriminator(rngs=nnx.Rngs(0), **kw)(real))
    assert shape(ndf=8, n_layers=2).shape == (4, 6, 6, 1)
    full = nnx.eval_shape(lambda: PatchGANDiscriminator(rngs=nnx.Rngs(0)))  # LlamaGen's 64, 3
    assert sum(p.size for p in jax.tree.leaves(nnx.state(full, nnx.Param))) == 2_765_633
    disc = nnx.jit(lambda: PatchGANDiscriminator(ndf=8, n_layers=3, rngs=nnx.Rngs(0)))()

    @nnx.jit
    def grads_and_logits(d):
        # Hinge D loss, plus the generator's hinge loss for the last bias: with every
        # logit inside the margin, d/db of the D loss is 0.5 * (-1 + 1) = 0 exactly.
        d_grads = nnx.grad(lambda d: hinge_d_loss(d(real), d(fake)))(d)
        g_grads = nnx.grad(lambda d: hinge_gen_loss(d(fake)))(d)
        return d_grads, g_grads, d(real)

    d_grads, g_grads, logits = grads_and_logits(disc)
    assert logits.shape == (4, 2, 2, 1) and logits.dtype == jnp.float32
    leaves = jax.tree.leaves_with_path(nnx.state(d_grads, nnx.Param))
    assert len(leaves) == 5 + 2 + 3 * 2  # 5 kernels, first/last bias, 3 norms
    for path, g in leaves:
        last_bias = "4" in str(path[1]) and "bias" in str(path)
        assert np.all(np.isfinite(g)) and (float(jnp.max(jnp.abs(g))) > 0) != last_bias, path
    assert float(jnp.abs(g_grads["convs"][4]["bias"][...]).max()) > 0
    with pytest.raises(ValueError, match="loss.disc_norm"):
        PatchGANDiscriminator(norm="instance", rngs=nnx.Rngs(0))


@pytest.mark.skipif(not HAS_TORCH, reason="needs torch")
def test_discriminator_matches_torch_train_mode_batchnorm():
    import torch

    disc = nnx.jit(lambda: PatchGANDiscriminator(ndf=4, n_layers=2, rngs=nnx.Rngs(2)))()
    x = images(8, 3, 16)
    layers = []
    for i, (conv, norm) in enumerate(zip(disc.convs, disc.norms)):
        k = np.asarray(conv.kernel[...])
        c = torch.nn.Conv2d(k.shape[2], k.shape[3], 4, conv.strides, 1, bias=conv.bias is not None)
        c.weight.data = torch.from_numpy(k.transpose(3, 2, 0, 1).copy())
        if conv.bias is not None:
            c.bias.data = torch.from_numpy(np.asarray(conv.bias[...]).copy())
        layers.append(c)
        if norm is not None:
            bn = torch.nn.BatchNorm2d(k.shape[3]).train()
            bn.weight.data = torch.from_numpy(np.asarray(norm.scale[...]).copy())
            bn.bias.data = torch.from_numpy(np.asarray(norm.bias[...]).copy())
            layers.append(bn)
        if i < len(disc.convs) - 1:
            layers.append(torch.nn.LeakyReLU(0.2))
    with torch.no_grad():
        ref = torch.nn.Sequential(*layers)(torch.from_numpy(np.array(x)).permute(0, 3, 1, 2))
    np.testing.assert_allclose(np.asarray(nnx.jit(lambda d, x: d(x))(disc, x)),
                               ref.permute(0, 2, 3, 1).numpy(), atol=1e-4)
