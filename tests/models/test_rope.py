"""2D RoPE (`models.layers.rope_2d`) against a numpy rotation, and the properties the
model relies on: scores depend on the (row, column) offset alone; the class slot keeps
its vector."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from lasad_jax.models.layers import rope_2d

D, WIDTH, BASE = 16, 5, 100.0


def numpy_rope(x: np.ndarray, row: int, col: int) -> np.ndarray:
    """One image slot's vector `[D]`: in the first half, the pairs (x[i], x[i + D/4])
    turn by row * f_i; in the second half, by col * f_i; f_i = BASE^(-i / (D/4))."""
    quarter = D // 4
    freqs = BASE ** (-np.arange(quarter) / quarter)
    out = x.astype(np.float64).copy()
    for half, pos in ((0, row), (1, col)):
        a = x[half * 2 * quarter: half * 2 * quarter + quarter]
        b = x[half * 2 * quarter + quarter: (half + 1) * 2 * quarter]
        c, s = np.cos(pos * freqs), np.sin(pos * freqs)
        out[half * 2 * quarter: half * 2 * quarter + quarter] = a * c - b * s
        out[half * 2 * quarter + quarter: (half + 1) * 2 * quarter] = a * s + b * c
    return out


def _rotate(x: np.ndarray, slots: np.ndarray) -> np.ndarray:
    """`x [T, D]` at sequence `slots` (one class slot first), one head."""
    out = rope_2d(jnp.asarray(x[:, None, :], jnp.float32), jnp.asarray(slots), num_prefix=1,
                  width=WIDTH, base=BASE)
    return np.asarray(out[:, 0, :], np.float64)


def test_rope_matches_a_numpy_rotation_and_spares_the_class_slot():
    rng = np.random.default_rng(0)
    slots = np.arange(1 + 3 * WIDTH)
    x = rng.standard_normal((len(slots), D))
    got = _rotate(x, slots)
    np.testing.assert_allclose(got[0], x[0], rtol=1e-6)  # the class slot: unrotated
    for t in slots[1:]:
        row, col = divmod(int(t) - 1, WIDTH)
        np.testing.assert_allclose(got[t], numpy_rope(x[t], row, col), rtol=1e-5, atol=1e-5)


def test_scores_depend_on_the_offset_alone():
    rng = np.random.default_rng(1)
    q, k = rng.standard_normal(D), rng.standard_normal(D)

    def score(q_slot: int, k_slot: int) -> float:
        out = _rotate(np.stack([q, k]), np.array([q_slot, k_slot]))
        return float(out[0] @ out[1])

    def slot(row: int, col: int) -> int:
        return 1 + row * WIDTH + col

    # (dr, dc) = (1, -2) from three places; another offset scores otherwise.
    same = [score(slot(r + 1, c - 2), slot(r, c)) for r, c in ((0, 2), (1, 3), (2, 4))]
    np.testing.assert_allclose(same, same[0], rtol=1e-5)
    assert abs(score(slot(1, 1), slot(0, 0)) - same[0]) > 1e-3
