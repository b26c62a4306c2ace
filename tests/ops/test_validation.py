"""Bad input raises ValueError naming the argument and what was expected."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

from lasad_jax import ops

B, T, H, DK, DV = 2, 9, 3, 4, 5
Q = jnp.ones((B, T, H, DK))
K = jnp.ones((B, T, H, DK))
V = jnp.ones((B, T, H, DV))
GOOD = dict(width=3, row_decay=jnp.full((H,), 0.9), col_decay=jnp.full((H,), 0.8))


def call(**over):
    args = dict(q=Q, k=K, v=V) | GOOD | over
    q, k, v = args.pop("q"), args.pop("k"), args.pop("v")
    return ops.lasad_attention(q, k, v, **args)


CASES = [
    # (overrides, words the message must contain)
    (dict(k=jnp.ones((B, T, H, DK + 1))), ["k", "shape of q"]),
    (dict(v=jnp.ones((B, T + 1, H, DV))), ["v", "leading dims"]),
    (dict(q=jnp.ones((B, T, DK))), ["q", "rank 4", "[batch, T, heads, D]"]),
    (dict(v=jnp.ones((B, T, H, DV), jnp.int32)), ["v", "floating dtype"]),
    (dict(q=np.ones((B, T, H, DK)).tolist()), ["q", "array"]),
    # Mixed dtypes would round k and v to q's silently.
    (dict(q=Q.astype(jnp.bfloat16)), ["share one dtype", "q bfloat16, k float32, v float32"]),
    (dict(v=V.astype(jnp.bfloat16)), ["share one dtype", "q float32, k float32, v bfloat16"]),
    (dict(row_decay=jnp.array([0.9, 1.2, 0.5])), ["row_decay", "(0, 1]"]),
    (dict(col_decay=jnp.array([0.9, 0.0, 0.5])), ["col_decay", "(0, 1]"]),
    (dict(col_decay=jnp.array([0.9, -0.1, 0.5])), ["col_decay", "(0, 1]"]),
    (dict(row_decay=jnp.full((H + 1,), 0.9)), ["row_decay", "[heads]", f"({H},)"]),
    (dict(row_decay=jnp.full((H, 1), 0.9)), ["row_decay", "rank 1"]),
    (dict(width=0), ["width", ">= 1"]),
    (dict(width=-2), ["width", ">= 1"]),
    (dict(width=2.5), ["width", "int"]),
    (dict(num_prefix=-1), ["num_prefix", ">= 0"]),
    (dict(num_prefix=T + 1), ["num_prefix", f"<= T = {T}"]),
    (dict(impl="fast"), ["impl", "reference", "chunked", "auto"]),
    (dict(chunk_size=0), ["chunk_size", ">= 1"]),
    (dict(q=Q[:, :0], k=K[:, :0], v=V[:, :0]), ["T = q.shape[1] >= 1"]),
    (dict(q=Q[:0], k=K[:0], v=V[:0]), ["batch, heads, Dk, Dv >= 1", "(0, 9, 3, 4)"]),
    (dict(q=Q[:, :, :0], k=K[:, :, :0], v=V[:, :, :0], row_decay=jnp.ones((0,)),
          col_decay=jnp.ones((0,))), ["batch, heads, Dk, Dv >= 1"]),
]


@pytest.mark.parametrize("over,words", CASES, ids=[str(i) for i in range(len(CASES))])
def test_parallel_rejects_bad_input(over, words):
    with pytest.raises(ValueError) as err:
        call(**over)
    for word in words:
        assert word in str(err.value), (word, str(err.value))


def test_variants_check_their_decay():
    with pytest.raises(ValueError, match=r"decay must have shape \[heads\]"):
        ops.linear_1d_attention(Q, K, V, decay=jnp.full((H + 2,), 0.5))
    with pytest.raises(ValueError, match=r"decay values must lie in \(0, 1\]"):
        ops.linear_1d_attention(Q, K, V, decay=jnp.full((H,), 1.5))
    with pytest.raises(ValueError, match="row_decay"):
        ops.lasad_row_attention(Q, K, V, width=3, row_decay=jnp.zeros((H,)),
                                col_decay=GOOD["col_decay"])


def test_decode_rejects_bad_input():
    state = ops.lasad_decode_init(B, H, DK, DV, width=3)
    q1, k1, v1 = Q[:, 0], K[:, 0], V[:, 0]
    with pytest.raises(ValueError, match="do not match the state"):
        ops.lasad_decode_step(state, q1[:1], k1[:1], v1[:1], row_decay=GOOD["row_decay"],
                              col_decay=GOOD["col_decay"])
    with pytest.raises(ValueError, match=r"rank 3 \(\[batch, heads, D\]\)"):
        ops.lasad_decode_step(state, Q, K, V, row_decay=GOOD["row_decay"],
                              col_decay=GOOD["col_decay"])
    with pytest.raises(ValueError, match="col_decay values"):
        ops.lasad_decode_step(state, q1, k1, v1, row_decay=GOOD["row_decay"],
                              col_decay=jnp.full((H,), 2.0))
    with pytest.raises(ValueError, match="share one dtype.*k bfloat16"):
        ops.linear_decode_step(ops.linear_decode_init(B, H, DK, DV), q1,
                               k1.astype(jnp.bfloat16), v1)
    with pytest.raises(ValueError, match="num_prefix must be >= 0"):
        ops.linear_decode_step(ops.linear_decode_init(B, H, DK, DV), q1, k1, v1, num_prefix=-3)
    with pytest.raises(ValueError, match="width must be >= 1"):
        ops.lasad_decode_init(B, H, DK, DV, width=0)
    with pytest.raises(ValueError, match="dk must be a Python int"):
        ops.lasad_row_decode_init(B, H, "4", DV, width=3)


@pytest.mark.parametrize("step,init,decays", [
    (ops.lasad_row_decode_step, ops.lasad_decode_init, dict(row_decay=GOOD["row_decay"],
                                                            col_decay=GOOD["col_decay"])),
    (ops.linear_decode_step, ops.lasad_decode_init, {}),
    (ops.lasad_decode_step, ops.linear_decode_init, dict(row_decay=GOOD["row_decay"],
                                                         col_decay=GOOD["col_decay"])),
    (ops.linear_1d_decode_step, None, dict(decay=GOOD["row_decay"])),
], ids=["row<-lasad", "linear<-lasad", "lasad<-linear", "linear_1d<-None"])
def test_decode_step_names_the_state_it_takes(step, init, decays):
    """A state from another variant's init (or none) is refused naming the right init,
    instead of failing on a missing attribute."""
    if init is ops.lasad_decode_init:
        state = init(B, H, DK, DV, width=3)
    else:
        state = init(B, H, DK, DV) if init else None
    with pytest.raises(ValueError, match=r"state must be the \w+State that \w+_decode_init"):
        step(state, Q[:, 0], K[:, 0], V[:, 0], **decays)


def test_integer_decays_are_taken_as_float():
    """`[1, 1, 1]` (a list, a numpy or a jax int array) is a valid decay of 1."""
    ones = jnp.ones((H,), jnp.float32)
    want = call(row_decay=ones, col_decay=ones)
    for row in ([1] * H, np.ones(H, np.int64), jnp.ones((H,), jnp.int32)):
        np.testing.assert_array_equal(np.asarray(call(row_decay=row, col_decay=ones)),
                                      np.asarray(want))
    with pytest.raises(ValueError, match=r"col_decay values must lie in \(0, 1\]"):
        call(col_decay=[1, 2, 1])
