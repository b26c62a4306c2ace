"""The tokenizer contract: exact values, lossless round trips, and clear input errors."""

from __future__ import annotations

import numpy as np
import pytest

from lasad_jax.data import load_digits
from lasad_jax.tokenizers import IntensityTokenizer, Tokenizer, TokenizerConfig, build_tokenizer


def _image(values, size=(1, 4)) -> np.ndarray:
    return np.asarray(values, np.uint8).reshape(1, *size, 1)


def test_known_values_for_17_levels():
    tok = IntensityTokenizer(levels=17, image_size=(1, 4))
    assert isinstance(tok, Tokenizer)
    assert (tok.vocab_size, tok.grid_shape, tok.image_shape) == (17, (1, 4), (1, 4, 1))
    assert tok.seq_len == 4
    codes = tok.encode(_image([255, 128, 0, 8]))
    assert codes.dtype == np.int32
    np.testing.assert_array_equal(codes, [[[16, 8, 0, 1]]])  # 8 * 16 / 255 = 0.50..., rounds up
    decoded = tok.decode(np.array([[[8, 16, 0, 1]]]))
    np.testing.assert_array_equal(decoded, _image([128, 255, 0, 16]))


def test_two_levels_threshold_at_mid_grey():
    tok = IntensityTokenizer(levels=2, image_size=(1, 4))
    np.testing.assert_array_equal(tok.encode(_image([0, 127, 128, 255])), [[[0, 0, 1, 1]]])
    np.testing.assert_array_equal(tok.decode(np.array([[[0, 1, 1, 0]]])), _image([0, 255, 255, 0]))


@pytest.mark.parametrize("levels", [2, 3, 16, 17, 100, 255, 256])
def test_every_level_round_trips(levels):
    tok = IntensityTokenizer(levels=levels, image_size=(1, levels))
    codes = np.arange(levels, dtype=np.int32).reshape(1, 1, levels)
    images = tok.decode(codes)
    assert images.dtype == np.uint8 and images[0, 0, 0, 0] == 0 and images[0, 0, -1, 0] == 255
    np.testing.assert_array_equal(tok.encode(images), codes)
    np.testing.assert_array_equal(tok.decode(tok.encode(images)), images)


def test_256_levels_is_the_identity():
    tok = IntensityTokenizer(levels=256, image_size=(16, 16))
    images = np.arange(256, dtype=np.uint8).reshape(1, 16, 16, 1)
    np.testing.assert_array_equal(tok.encode(images)[..., None], images)


def test_digits_round_trip_exactly():
    tok = IntensityTokenizer(levels=17, image_size=(8, 8))
    from sklearn.datasets import load_digits as sklearn_digits

    ink = sklearn_digits().images.astype(np.int32)
    for split in ("train", "val"):
        images, _ = load_digits(split)
        codes = tok.encode(images)
        assert codes.min() == 0 and codes.max() == 16
        np.testing.assert_array_equal(tok.decode(codes), images)
    # The tokens are the original ink counts, in the dataset's order.
    all_images = np.concatenate([load_digits(s)[0] for s in ("train", "val")])
    assert sorted(map(bytes, tok.encode(all_images).astype(np.int32))) == sorted(map(bytes, ink))


def test_three_channels_replicate_grey_and_read_the_mean():
    tok = IntensityTokenizer(levels=17, image_size=(1, 2), channels=3)
    codes = np.array([[[8, 16]]])
    images = tok.decode(codes)
    assert images.shape == (1, 1, 2, 3)
    np.testing.assert_array_equal(images[0, 0], [[128, 128, 128], [255, 255, 255]])
    np.testing.assert_array_equal(tok.encode(images), codes)
    colour = np.array([[[[255, 0, 0], [255, 255, 0]]]], np.uint8)  # means 85 and 170
    np.testing.assert_array_equal(tok.encode(colour), [[[5, 11]]])


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(levels=1, image_size=(8, 8)), r"levels must be an int in \[2, 256\], got 1"),
        (dict(levels=257, image_size=(8, 8)), r"levels must be an int in \[2, 256\]"),
        (dict(levels=4.0, image_size=(8, 8)), r"levels must be an int"),
        (dict(levels=17, image_size=(8,)), r"image_size must be a \(height, width\) pair"),
        (dict(levels=17, image_size=(8, 0)), r"image_size\[1\] must be a positive int, got 0"),
        (dict(levels=17, image_size=(8, 8), channels=2), r"channels must be one of \(1, 3\)"),
    ],
)
def test_constructor_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        IntensityTokenizer(**kwargs)


def test_encode_and_decode_reject_bad_input():
    tok = IntensityTokenizer(levels=17, image_size=(8, 8))
    with pytest.raises(ValueError, match=r"codes must have shape \[N, 8, 8\], got \(3, 64\)"):
        tok.decode(np.zeros((3, 64), np.int32))
    with pytest.raises(ValueError, match=r"codes must have an integer dtype, got float32"):
        tok.decode(np.zeros((1, 8, 8), np.float32))
    with pytest.raises(ValueError, match=r"codes must lie in \[0, 17\) .* got values in \[0, 17\]"):
        tok.decode(np.array([17] + [0] * 63).reshape(1, 8, 8))
    with pytest.raises(ValueError, match=r"codes must lie in \[0, 17\) .* got values in \[-1, 0\]"):
        tok.decode(np.array([-1] + [0] * 63).reshape(1, 8, 8))
    with pytest.raises(ValueError, match=r"images must have shape \[N, 8, 8, 1\], got \(2, 8, 8\)"):
        tok.encode(np.zeros((2, 8, 8), np.uint8))
    with pytest.raises(ValueError, match=r"images must have dtype uint8 .* got float32"):
        tok.encode(np.zeros((2, 8, 8, 1), np.float32))


def _config(**overrides) -> TokenizerConfig:
    fields = dict(name="intensity", levels=17, image_size=(8, 8), channels=1)
    fields.update(overrides)
    return TokenizerConfig(**fields)


def test_factory_builds_from_config():
    tok = build_tokenizer(_config(image_size=(4, 6), channels=3))
    assert isinstance(tok, IntensityTokenizer)
    assert (tok.vocab_size, tok.grid_shape, tok.image_shape) == (17, (4, 6), (4, 6, 3))


def test_factory_and_config_reject_unknown_names_and_bad_fields():
    with pytest.raises(ValueError,
                       match=r"tokenizer\.checkpoint is empty.*lasad_jax\.convert\.llamagen_vq"):
        build_tokenizer(_config(name="vq16", checkpoint=""))
    with pytest.raises(FileNotFoundError, match=r"does not exist.*--checkpoint vq_ds16_c2i\.pt"):
        build_tokenizer(_config(name="vq16", checkpoint="/nonexistent/vq16"))
    with pytest.raises(ValueError, match=r"tokenizer.name must be one of \('intensity', 'vq16'\), "
                                         r"got 'palette'"):
        _config(name="palette")
    with pytest.raises(ValueError) as err:
        _config(levels=1, image_size=8, channels=2)
    assert [p.split(" ")[0] for p in err.value.problems] == [
        "tokenizer.image_size", "tokenizer.levels", "tokenizer.channels"]
