"""The README's decay picture: what one query token keeps of every earlier token.

    python benchmarks/decay_figure.py            # writes docs/decay.png

Two panels on a 16 x 16 token grid, the query in row 8, column 8: the weight `M[i, j]`
that LASAD's 2D decay gives each earlier token (`a^(r_i - r_j) b^|c_i - c_j|`), and the
weight the 1D raster decay of RetNet and Lightning attention gives it (`lambda^(i - j)`),
with the same decay (0.9) on every axis. The weights are the operator's own: the rows of
the mask that `lasad_jax.ops.decay.decay_mask` builds for the quadratic reference, so the
picture cannot drift from the code. The 1D panel shows why LASAD exists: the token just
above the query is `width` steps back in raster order and keeps `0.9^16 = 0.19`, less
than the far end of the previous row (`0.9^9 = 0.39`); under the 2D decay it keeps 0.9.
"""

from __future__ import annotations

import argparse
import pathlib

import jax.numpy as jnp
import numpy as np

from lasad_jax.ops.decay import decay_mask

ROOT = pathlib.Path(__file__).resolve().parents[1]


def query_weights(variant: str, decay: float, width: int, query: tuple[int, int]) -> np.ndarray:
    """`[width, width]` float: the weight each grid token gets from the query; NaN after it.

    One head, no prefix slot, a full square grid; `decay` is both of LASAD's decays, or
    the one decay of `linear_1d`.
    """
    log = jnp.log(jnp.array([decay], jnp.float32))
    mask = np.asarray(decay_mask(variant, width * width, 0, width, log, log))[0]
    row = mask[query[0] * width + query[1]].reshape(width, width).astype(np.float64)
    future = np.arange(width * width).reshape(width, width) > query[0] * width + query[1]
    row[future] = np.nan
    return row


def draw(out: pathlib.Path, decay: float = 0.9, width: int = 16,
         query: tuple[int, int] = (8, 8)) -> dict[str, np.ndarray]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = {
        "lasad": f"LASAD, 2D decay: $a^{{r_i-r_j}}\\, b^{{|c_i-c_j|}}$, a = b = {decay}",
        "linear_1d": f"1D raster decay (RetNet, Lightning): $\\lambda^{{i-j}}$, λ = {decay}",
    }
    weights = {v: query_weights(v, decay, width, query) for v in panels}
    # Tokens after the query (NaN) are not visible to it: grey.
    cmap = matplotlib.colormaps["viridis"].with_extremes(bad="#dddddd")
    fig, axes = plt.subplots(1, 2, figsize=(10.5, 5.2), constrained_layout=True)
    r, c = query
    # The two cells whose weights tell the story: just above the query, and the last
    # token of the previous row (the nearest in raster order, the farthest on the grid).
    marks = [(r - 1, c), (r - 1, width - 1)]
    for ax, (variant, title) in zip(axes, panels.items()):
        w = weights[variant]
        im = ax.imshow(w, cmap=cmap, vmin=0.0, vmax=1.0)
        ax.plot(c, r, marker="*", color="red", markersize=14)
        for mr, mc in marks:
            ax.text(mc, mr, f"{w[mr, mc]:.2f}", ha="center", va="center", fontsize=7,
                    color="white" if w[mr, mc] < 0.5 else "black")
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("column")
        ax.set_ylabel("row")
    fig.colorbar(im, ax=axes, shrink=0.8, label="weight of an earlier token (query: red star)")
    fig.suptitle(f"What the query token at row {r}, column {c} keeps of every earlier token "
                 f"({width} x {width} grid; grey: later tokens)", fontsize=11)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return weights


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=pathlib.Path, default=ROOT / "docs" / "decay.png")
    p.add_argument("--decay", type=float, default=0.9)
    p.add_argument("--width", type=int, default=16)
    p.add_argument("--query", type=int, nargs=2, default=(8, 8), metavar=("ROW", "COL"))
    args = p.parse_args(argv)
    weights = draw(args.out, args.decay, args.width, tuple(args.query))
    r, c = args.query
    for variant, w in weights.items():
        print(f"{variant:9s} above: {w[r - 1, c]:.3f}  end of previous row: "
              f"{w[r - 1, args.width - 1]:.3f}  left: {w[r, c - 1]:.3f}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
