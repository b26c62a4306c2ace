"""The README's code runs, and its claims about state sizes hold."""

from __future__ import annotations

import pathlib
import re

import jax
import numpy as np

from lasad_jax import ops

ROOT = pathlib.Path(__file__).resolve().parents[2]


def test_readme_python_examples_run():
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    assert blocks, "README lost its runnable example"
    for block in blocks:
        namespace: dict = {}
        exec(compile(block, "README.md", "exec"), namespace)
    # The example compares decoding with the parallel form; check it agreed.
    err = np.abs(np.stack(namespace["outs"], 1) - np.asarray(namespace["o"])).max()
    assert err < 1e-4


def _numbers(state) -> int:
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(state) if np.ndim(x) > 0)


def test_decoding_state_sizes_match_the_docs():
    b, h, dk, dv, w = 1, 1, 8, 4, 16
    # One state per column, and keys and values of two grid rows and one prefix slot.
    want = w * dk * dv + (2 * w + 1) * (dk + dv)
    assert _numbers(ops.lasad_decode_init(b, h, dk, dv, w)) == want
    assert _numbers(ops.lasad_row_decode_init(b, h, dk, dv, w)) == 4 * dk * dv
    assert _numbers(ops.linear_1d_decode_init(b, h, dk, dv)) == 2 * dk * dv
    assert _numbers(ops.linear_decode_init(b, h, dk, dv)) == 2 * dk * dv
