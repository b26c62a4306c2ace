"""The LlamaGen VQ-16 converter: the real key list, shape/key errors, saving and loading,
and the VQ16Tokenizer built on a converted directory.

The expected key list is enumerated here from the architecture as LlamaGen's
`vq_model.py` builds it, independently of the converter's path -> key rule, so a wrong
rule cannot agree with itself.
"""

from __future__ import annotations

import sys

import jax
import numpy as np
import pytest

from lasad_jax.convert import llamagen_vq as conv
from lasad_jax.tokenizers.vq import VQConfig, abstract_model, param_count
from lasad_jax.tokenizers.vq16 import VQ16Tokenizer

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


def test_full_vq16_checkpoint_converts_completely():
    keys = llamagen_keys()
    assert len(keys) == 344
    assert conv.expected_keys(VQConfig()) == {k: s for k, s in keys.items()
                                              if k != "quantize.codebook_used"}
    # Zero-stride arrays: every shape is real, but no memory is spent on the values.
    sd = {k: np.broadcast_to(np.float32(0.25), s) for k, s in keys.items()}
    state = conv.convert(sd, VQConfig())
    leaves = jax.tree_util.tree_leaves(state)
    assert len(leaves) == 343
    n = sum(x.size for x in leaves)
    assert n == param_count(abstract_model(VQConfig())) and 71.5e6 < n < 72.5e6
    assert state["encoder"]["conv_in"]["kernel"].shape == (3, 3, 3, 128)  # HWIO
    assert state["quantize"]["embedding"].shape == (16384, 8)
    # The stored codebook is unit-norm: 0.25 * sqrt(8) rows normalised.
    np.testing.assert_allclose(np.asarray(state["quantize"]["embedding"][...][0]),
                               np.full(8, 8 ** -0.5), rtol=1e-6)


def test_shape_and_key_errors_name_the_keys():
    sd = {k: np.broadcast_to(np.float32(0), s) for k, s in llamagen_keys().items()}
    bad = dict(sd, **{"encoder.conv_in.weight": np.zeros((128, 3, 4, 4), np.float32)})
    with pytest.raises(ValueError, match=r"shape of encoder\.conv_in\.weight: expected "
                                         r"\(128, 3, 3, 3\), got \(128, 3, 4, 4\)"):
        conv.convert(bad, VQConfig())
    extra = dict(sd, **{"encoder.extra.weight": np.zeros(3, np.float32)})
    with pytest.raises(ValueError, match=r"unknown keys.*\(1\): \['encoder\.extra\.weight'\]"):
        conv.convert(extra, VQConfig())
    gone = ("decoder.mid.1.q.bias", "quant_conv.weight")
    missing = {k: v for k, v in sd.items() if k not in gone}
    with pytest.raises(ValueError, match=r"missing keys \(2\): \['decoder\.mid\.1\.q\.bias', "
                                         r"'quant_conv\.weight'\]"):
        conv.convert(missing, VQConfig())


def test_save_load_round_trip_and_errors(tmp_path):
    sd = random_state_dict(SMALL)
    state = conv.convert(sd, SMALL)
    conv.save(str(tmp_path), state, SMALL)
    model = conv.load_vq(str(tmp_path))
    assert model.config == SMALL
    kernel = model.decoder.conv_blocks[0].res[0].conv1.kernel[...]
    np.testing.assert_array_equal(
        np.asarray(kernel), sd["decoder.conv_blocks.0.res.0.conv1.weight"].transpose(2, 3, 1, 0))
    with pytest.raises(FileNotFoundError, match=r"lacks .*vq_params\.npz.*llamagen_vq --check"):
        conv.load_vq(str(tmp_path / "nowhere"))


def test_read_torch_state_dict(tmp_path):
    torch = pytest.importorskip("torch")
    sd = {"a.weight": torch.ones(2, 3), "b.bias": torch.zeros(2, dtype=torch.float16)}
    torch.save({"model": sd, "steps": 7}, tmp_path / "ck.pt")
    out = conv.read_torch_state_dict(str(tmp_path / "ck.pt"))
    assert set(out) == {"a.weight", "b.bias"} and out["b.bias"].dtype == np.float32
    torch.save([1, 2], tmp_path / "list.pt")
    with pytest.raises(ValueError, match=r"expected a state dict .*'model'.*found list"):
        conv.read_torch_state_dict(str(tmp_path / "list.pt"))


def test_reading_without_torch_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)  # as on a machine without torch
    with pytest.raises(ImportError, match=r"needs torch.*pip install torch"):
        conv.read_torch_state_dict("vq_ds16_c2i.pt")


@pytest.fixture(scope="module")
def narrow_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("vq16_narrow")
    conv.save(str(path), conv.convert(random_state_dict(NARROW16, seed=1), NARROW16), NARROW16)
    return str(path)


def test_tokenizer_round_trip_with_padded_batches(narrow_dir):
    tok = VQ16Tokenizer(narrow_dir, (32, 48), batch_size=2)
    assert (tok.vocab_size, tok.grid_shape, tok.image_shape) == (64, (2, 3), (32, 48, 3))
    images = np.random.default_rng(0).integers(0, 256, (3, 32, 48, 3), dtype=np.uint8)
    codes = tok.encode(images)  # 3 images in batches of 2: the second batch is padded
    assert codes.shape == (3, 2, 3) and codes.dtype == np.int32
    assert codes.min() >= 0 and codes.max() < 64
    np.testing.assert_array_equal(tok.encode(images[2:]), codes[2:])  # padding changes nothing
    decoded = tok.decode(codes)
    assert decoded.shape == (3, 32, 48, 3) and decoded.dtype == np.uint8
    np.testing.assert_array_equal(tok.decode(codes[1:2]), decoded[1:2])
    assert tok._encode_batch._cache_size() == 1 and tok._decode_batch._cache_size() == 1


def test_tokenizer_grid_follows_the_downsampling_factor(narrow_dir):
    for px, grid in ((256, 16), (384, 24)):
        tok = VQ16Tokenizer(narrow_dir, (px, px), batch_size=4)
        assert tok.grid_shape == (grid, grid) and tok.seq_len == grid * grid
        # Traced, not run: the compiled encoder really produces that grid.
        out = jax.eval_shape(tok._encode_batch, tok._state,
                             jax.ShapeDtypeStruct((4, px, px, 3), np.uint8))
        assert out.shape == (4, grid, grid) and out.dtype == np.int32
    with pytest.raises(ValueError, match=r"positive multiples of 16 .* got \(250, 256\)"):
        VQ16Tokenizer(narrow_dir, (250, 256))


def test_tokenizer_missing_checkpoint_says_how_to_convert(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"vq_ds16_c2i\.pt.*python -m "
                                                r"lasad_jax\.convert\.llamagen_vq --checkpoint"):
        VQ16Tokenizer(str(tmp_path / "absent"), (256, 256))
