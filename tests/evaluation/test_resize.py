"""`eval.image_size`'s resize: torch's bicubic (LlamaGen's 384 -> 256 px), checked against
hand-worked values and a per-pixel loop written after torch's upsample_bicubic2d."""

from __future__ import annotations

import math

import numpy as np
import pytest
from PIL import Image

from lasad_jax.evaluation.resize import resize_bicubic, scored_size


def _torch_bicubic_loop(image: np.ndarray, size: int) -> np.ndarray:
    """One float output pixel at a time, as torch computes it (A = -0.75, align_corners
    False, source index not clamped, taps clamped to the border)."""
    a = -0.75

    def near(x):
        return ((a + 2) * x - (a + 3)) * x * x + 1

    def far(x):
        return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a

    def coefficients(t):
        return [far(t + 1), near(t), near(1 - t), far(2 - t)]

    height, width = image.shape[:2]
    out = np.zeros((size, size, image.shape[2]))
    for y in range(size):
        sy = (y + 0.5) * height / size - 0.5
        iy = math.floor(sy)
        wy = coefficients(sy - iy)
        for x in range(size):
            sx = (x + 0.5) * width / size - 0.5
            ix = math.floor(sx)
            wx = coefficients(sx - ix)
            for j in range(4):
                row = min(max(iy - 1 + j, 0), height - 1)
                for i in range(4):
                    col = min(max(ix - 1 + i, 0), width - 1)
                    out[y, x] += wy[j] * wx[i] * image[row, col]
    return out


def test_three_pixels_to_two_match_hand_worked_weights():
    # Scale 1.5: output 0 samples at 0.25, output 1 at 1.75. With A = -0.75 the weights
    # are (-0.10546875, 0.87890625, 0.26171875, -0.03515625) at 0.25 and reversed at
    # 1.75, so [0, 100, 200] gives 19.14 and 180.86.
    row = np.array([[[[0], [100], [200]]]], np.uint8)  # [1, 1, 3, 1]
    out = resize_bicubic(row, 2)
    assert out.shape == (1, 2, 2, 1) and out.dtype == np.uint8
    np.testing.assert_array_equal(out[0, :, :, 0], [[19, 181], [19, 181]])


def test_matches_a_per_pixel_loop_and_is_not_pils_bicubic():
    images = np.random.default_rng(0).integers(0, 256, (2, 12, 12, 3), dtype=np.uint8)
    out = resize_bicubic(images, 8)  # 384 -> 256 is the same 1.5 ratio
    for image, got in zip(images, out):
        want = np.clip(np.rint(_torch_bicubic_loop(image.astype(np.float64), 8)), 0, 255)
        np.testing.assert_array_equal(got, want)
    # PIL antialiases when shrinking: another filter, other pixels.
    pil = np.asarray(Image.fromarray(images[0]).resize((8, 8), Image.BICUBIC))
    assert np.abs(pil.astype(int) - out[0]).max() > 10


def test_upscaling_matches_the_loop_and_flat_images_stay_flat():
    images = np.random.default_rng(1).integers(0, 256, (1, 5, 7, 1), dtype=np.uint8)
    want = np.clip(np.rint(_torch_bicubic_loop(images[0].astype(np.float64), 9)), 0, 255)
    np.testing.assert_array_equal(resize_bicubic(images, 9)[0], want)
    flat = np.full((3, 6, 6, 3), 77, np.uint8)
    np.testing.assert_array_equal(resize_bicubic(flat, 4), np.full((3, 4, 4, 3), 77))
    same = np.random.default_rng(2).integers(0, 256, (2, 4, 4, 3), dtype=np.uint8)
    assert resize_bicubic(same, 4) is same  # already that size: untouched


def test_scored_size_needs_square_samples_to_resize():
    assert scored_size(0, (8, 12)) == (8, 12)
    assert scored_size(256, (384, 384)) == (256, 256)
    with pytest.raises(ValueError) as err:
        scored_size(16, (8, 12))
    assert str(err.value) == (
        "config.eval.image_size=16 resizes square images, but the samples are 8x12 "
        "(tokenizer.image_size); set config.eval.image_size=0 to score them as they are")
