"""`impl="pallas"` through the public API (interpret mode on CPU) against the reference."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.ops.helpers import decay_kwargs, random_qkv, rel_err
from lasad_jax import ops


@pytest.mark.parametrize("width, image_tokens, num_prefix, chunk_size", [
    (5, 23, 1, None),   # one chunk: the masked (flash-style) kernel
    (4, 30, 0, 8),      # longer than a chunk: the chunked kernel, 2 rows per chunk
    (5, 37, 1, 10),     # chunked, partial last row, a prefix slot
])
def test_pallas_matches_reference_values_and_gradients(width, image_tokens, num_prefix,
                                                       chunk_size):
    q, k, v = random_qkv(0, batch=2, tokens=num_prefix + image_tokens)
    decays = decay_kwargs("lasad", width)

    def run(impl, q, k, v, row, col):
        return ops.lasad_attention(q, k, v, width=width, row_decay=row, col_decay=col,
                                   num_prefix=num_prefix, impl=impl, chunk_size=chunk_size)

    args = (q, k, v, decays["row_decay"], decays["col_decay"])
    got, want = run("pallas", *args), run("reference", *args)
    assert rel_err(got, want) < 1e-4

    def loss(impl):
        return lambda *a: jnp.sum(jnp.sin(run(impl, *a)))

    g_pallas = jax.grad(loss("pallas"), argnums=(0, 1, 2, 3, 4))(*args)
    g_ref = jax.grad(loss("reference"), argnums=(0, 1, 2, 3, 4))(*args)
    for name, a, b in zip(("q", "k", "v", "row_decay", "col_decay"), g_pallas, g_ref):
        assert rel_err(a, b) < 1e-4, name


def test_pallas_other_variants_say_what_to_use():
    q, k, v = random_qkv(0, batch=1, tokens=9)
    with pytest.raises(ValueError, match="'lasad' variant only; use impl='chunked'"):
        ops.linear_attention(q, k, v, impl="pallas")


def test_auto_does_not_pick_pallas_where_it_was_measured_slower():
    assert {impl for _, _, impl in ops.AUTO_TABLE} == {"chunked"}
    assert np.all([ops.select_impl(p, t) == "chunked" for p in ("cpu", "gpu", "tpu")
                   for t in (256, 16384)])
