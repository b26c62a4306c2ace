"""The VQ tokenizer's weights directory (save, load, errors) and `VQ16Tokenizer` on a
converted directory: padded batches, the grid per image size, a missing checkpoint."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from lasad_jax.convert.llamagen_vq import convert
from lasad_jax.tokenizers.vq.weights import load_vq, save_vq
from lasad_jax.tokenizers.vq16 import VQ16Tokenizer
from tests.convert.helpers import NARROW16, SMALL, random_state_dict


def test_save_load_round_trip_and_errors(tmp_path):
    sd = random_state_dict(SMALL)
    state = convert(sd, SMALL)
    save_vq(str(tmp_path), state, SMALL)
    model = load_vq(str(tmp_path))
    assert model.config == SMALL
    kernel = model.decoder.conv_blocks[0].res[0].conv1.kernel[...]
    np.testing.assert_array_equal(
        np.asarray(kernel), sd["decoder.conv_blocks.0.res.0.conv1.weight"].transpose(2, 3, 1, 0))
    with pytest.raises(FileNotFoundError, match=r"lacks .*vq_params\.npz.*llamagen_vq --check"):
        load_vq(str(tmp_path / "nowhere"))


@pytest.fixture(scope="module")
def narrow_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("vq16_narrow")
    save_vq(str(path), convert(random_state_dict(NARROW16, seed=1), NARROW16), NARROW16)
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
