"""What the sampling notebook (`notebooks/sampling_demo.ipynb`) needs beyond the sampler.

The notebook stays a thin sequence of calls so that everything it does is tested: a
workdir fetched from `gs://` (or used where it is), and a trained model's decay maps,
the weight each head's query at a chosen token gives every earlier token of the grid.
Getting the model (that checkpoint, or the demo trained on the spot) is
`lasad_jax.jobs.sample.load_or_train`.
"""

from __future__ import annotations

import os

import numpy as np
from flax import nnx

from lasad_jax.files import is_remote, local_copy, tf_gfile
from lasad_jax.ops.decay import decay_mask
from lasad_jax.validation import check_location


def fetch_workdir(src: str, cache_dir: str) -> str:
    """A local directory holding `src`'s `checkpoints/`: `src` itself when it is a local
    path, else (a `gs://` URL) a copy under `cache_dir` made through tf.io.gfile, which
    reads `gs://` with the machine's Google credentials (on Colab,
    `google.colab.auth.authenticate_user()` first).

    The copy is `files.local_copy`'s, named by the URL's last part and hash, so two runs
    whose paths end alike never share one, and reused only while the remote
    `checkpoints/` lists the same files, sizes and modification times: a run that has
    saved newer steps since is copied again, so the notebook samples what the run holds
    now."""
    if not is_remote(check_location("checkpoint", src)):
        if not os.path.isdir(os.path.join(src, "checkpoints")):
            raise FileNotFoundError(f"no checkpoints/ under {src!r}: give the --workdir of a "
                                    f"training run (local path or gs:// URL), or leave it "
                                    f"empty to train the demo model")
        return src
    src = src.rstrip("/")
    if not tf_gfile().isdir(f"{src}/checkpoints"):
        raise FileNotFoundError(f"no checkpoints/ under {src!r}")
    return local_copy(src, "checkpoint", part="checkpoints", cache=cache_dir)


def layer_decays(model: nnx.Module) -> list[dict[str, np.ndarray]]:
    """Per layer, the learned decays of each head (`row_decay`/`col_decay` for the LASAD
    mixers, `decay` for `linear_1d`; empty for `linear` and `softmax`)."""
    out = []
    for block in model.blocks:
        fn = getattr(block.mixer, "_decays", None)
        out.append({k: np.asarray(v) for k, v in (fn() if fn else {}).items()})
    return out


def decay_map(model: nnx.Module, layer: int, row: int, col: int) -> np.ndarray:
    """`[heads, rows, cols]` float32: the weight `M[i, j]` (docs/operator.md) that the query
    of the image token at `(row, col)` gives the key of every image token `j` in layer
    `layer`; zero for tokens after it (causality). The class slot's weight is always 1
    and is left out."""
    cfg = model.cfg
    rows, cols = cfg.grid
    if cfg.mixer == "softmax":
        raise ValueError("model.mixer='softmax' has no decay: its weights depend on the "
                         "tokens; decay maps need one of lasad, lasad_row, linear_1d, linear")
    if not 0 <= layer < cfg.num_layers:
        raise ValueError(f"layer must be in [0, {cfg.num_layers}), got {layer}")
    if not (0 <= row < rows and 0 <= col < cols):
        raise ValueError(f"(row, col) must lie on the {rows}x{cols} grid, got ({row}, {col})")
    decays = layer_decays(model)[layer]
    heads = cfg.num_heads
    ones = np.ones(heads, np.float32)
    log_row = np.log(decays.get("row_decay", decays.get("decay", ones)))
    log_col = np.log(decays.get("col_decay", ones))
    p = cfg.num_prefix
    query = p + row * cols + col
    mask = decay_mask(cfg.mixer, p + rows * cols, p, cols, log_row, log_col)
    weights = np.broadcast_to(np.asarray(mask[:, query, p:]), (heads, rows * cols))
    return weights.reshape(heads, rows, cols)  # `linear` gives one map for all heads


def plot_decay_maps(maps: np.ndarray, row: int, col: int, titles: list[str] | None = None):
    """One panel per head, log-scaled colours (decays span orders of magnitude), the
    query token circled; returns the matplotlib figure."""
    import matplotlib.pyplot as plt
    from matplotlib.colors import LogNorm

    heads = maps.shape[0]
    fig, axes = plt.subplots(1, heads, figsize=(2.6 * heads, 2.9), squeeze=False)
    positive = maps[maps > 0]
    norm = LogNorm(vmin=max(float(positive.min()), 1e-4), vmax=1.0)
    for h, ax in enumerate(axes[0]):
        image = ax.imshow(np.where(maps[h] > 0, maps[h], np.nan), cmap="viridis", norm=norm)
        ax.scatter([col], [row], s=60, facecolors="none", edgecolors="red", linewidths=1.5)
        ax.set_title(titles[h] if titles else f"head {h}", fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.colorbar(image, ax=list(axes[0]), shrink=0.8, label="weight M[i, j]")
    return fig
