"""Drawing the images of a `sample` block from a model: labels, batches, files.

Images are generated class by class (`per_class` of each class in `sample.classes`, all
classes when empty), in fixed-size batches so one compiled program serves every batch.
Batch `i` draws from `fold_in(PRNGKey(sample.seed), i)`: the same config, seed and batch
size give the same images.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh
from tqdm import tqdm

from lasad_jax.sampling.config import SampleConfig
from lasad_jax.sampling.generate import generate
from lasad_jax.sampling.images import make_grid, save_npz, save_png
from lasad_jax.tokenizers import Tokenizer

GRID_MAX = 16  # the PNG shows at most 16 classes x 16 samples; the npz holds them all


def class_list(classes: Any, per_class: int, num_classes: int) -> np.ndarray:
    """Class-major label list: `per_class` copies of each requested class."""
    classes = list(classes) if classes else list(range(num_classes))
    bad = [c for c in classes if not isinstance(c, (int, np.integer)) or not 0 <= c < num_classes]
    if bad:
        raise ValueError(f"sample.classes must be ints in [0, {num_classes}), got {bad}")
    if per_class < 1:
        raise ValueError(f"sample.per_class must be >= 1, got {per_class}")
    return np.repeat(np.asarray(classes, np.int32), per_class)


def sample_images(model: nnx.Module, tokenizer: Tokenizer, labels: np.ndarray,
                  cfg: SampleConfig, mesh: Mesh | None = None) -> np.ndarray:
    """uint8 images `[len(labels), H, W, C]`, generated in batches of `cfg.batch_size`
    (split over `mesh`'s data axes when given; every process gets all the images)."""
    bs = cfg.batch_size
    base = jax.random.key(cfg.seed)
    out = []
    batches = range(0, len(labels), bs)
    quiet = jax.process_index() != 0
    for i, start in enumerate(tqdm(batches, desc="sampling", unit="batch", disable=quiet)):
        chunk = labels[start:start + bs]
        padded = np.pad(chunk, (0, bs - len(chunk)), mode="edge")
        codes = generate(model, jnp.asarray(padded), jax.random.fold_in(base, i),
                         cfg_scale=cfg.cfg_scale, temperature=cfg.temperature,
                         top_k=cfg.top_k, top_p=cfg.top_p, mesh=mesh)
        out.append(tokenizer.decode(codes[:len(chunk)]))
    return np.concatenate(out)


def sample_to_files(model: nnx.Module, tokenizer: Tokenizer, cfg: SampleConfig, *,
                    num_classes: int, out_dir: str, mesh: Mesh | None = None) -> dict[str, str]:
    """Generates per `cfg` (the `sample` config block); writes `{cfg.name}.png` (one row
    per class) and `{cfg.name}.npz` into `out_dir`; returns their paths. With several
    processes all of them generate and process 0 alone writes (the others return {})."""
    labels = class_list(cfg.classes, cfg.per_class, num_classes)
    images = sample_images(model, tokenizer, labels, cfg, mesh)
    if jax.process_index() != 0:
        return {}
    os.makedirs(out_dir, exist_ok=True)
    paths = {"png": os.path.join(out_dir, f"{cfg.name}.png"),
             "npz": os.path.join(out_dir, f"{cfg.name}.npz")}
    cols = min(cfg.per_class, GRID_MAX)
    n_cls = min(len(labels) // cfg.per_class, GRID_MAX)
    shown = [c * cfg.per_class + j for c in range(n_cls) for j in range(cols)]
    save_png(paths["png"], make_grid(images[shown], cols=cols, scale=cfg.grid_scale))
    save_npz(paths["npz"], images, labels)
    return paths
