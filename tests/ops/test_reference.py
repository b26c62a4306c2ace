"""The quadratic reference against a plain numpy double loop over the spec (docs/operator.md).

The numpy loop is written independently of `lasad_jax.ops.decay`: it walks slot pairs and
applies the rules as stated, so a mistake in the shared mask builder shows up here.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

from lasad_jax.ops.decay import decay_mask

from tests.ops.helpers import COL_DECAY, PARALLEL, ROW_DECAY, decay_kwargs, random_qkv, rel_err


def spec_weight(variant, i, j, num_prefix, width, a, b):
    """Weight of key slot j for query slot i, per head, straight from the spec."""
    if j > i:
        return np.zeros_like(a)
    if j < num_prefix:
        return np.ones_like(a)
    ri, ci = divmod(i - num_prefix, width)
    rj, cj = divmod(j - num_prefix, width)
    if variant == "lasad":
        return a ** (ri - rj) * b ** abs(ci - cj)
    if variant == "lasad_row":
        return b ** (ci - cj) if ri == rj else a ** (ri - rj)
    if variant == "linear_1d":
        return b ** (i - j)
    return np.ones_like(a)


def spec_attention(variant, q, k, v, num_prefix, width, a, b):
    q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    out = np.zeros(v.shape)
    for i in range(q.shape[1]):
        for j in range(i + 1):
            m = spec_weight(variant, i, j, num_prefix, width, a, b)  # [H]
            score = np.einsum("bhd,bhd->bh", q[:, i], k[:, j]) * m
            out[:, i] += score[..., None] * v[:, j]
    return out


@pytest.mark.parametrize("variant", list(PARALLEL))
@pytest.mark.parametrize("width,num_prefix,num_image",
                         [(1, 0, 5), (2, 1, 7), (5, 2, 13), (16, 1, 40)])
def test_reference_matches_spec(variant, width, num_prefix, num_image):
    q, k, v = random_qkv(0, 2, num_prefix + num_image)
    out = PARALLEL[variant](q, k, v, num_prefix=num_prefix, impl="reference",
                            **decay_kwargs(variant, width))
    want = spec_attention(variant, q, k, v, num_prefix, width, ROW_DECAY, COL_DECAY)
    assert rel_err(out, want) < 1e-5


def test_mask_uses_2d_distance_not_raster_distance():
    """The token right above is one row away for LASAD but `width` steps for 1D decay,
    and the end of the previous row (one raster step back) is far away in 2D."""
    width, lam = 4, 0.5
    log = jnp.log(jnp.array([lam]))
    lasad = np.asarray(decay_mask("lasad", 2 * width, 0, width, log, log))[0]
    one_d = np.asarray(decay_mask("linear_1d", 2 * width, 0, width, log, log))[0]
    above, prev_row_end = (width, 0), (width, width - 1)
    assert lasad[above] == pytest.approx(lam)
    assert one_d[above] == pytest.approx(lam**width)
    assert lasad[prev_row_end] == pytest.approx(lam * lam ** (width - 1))
    assert one_d[prev_row_end] == pytest.approx(lam)
