"""`--mode=sample`: restore a trained model, generate images, write a grid and an npz.

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
from absl import logging
from flax import nnx
from jax.sharding import Mesh
from tqdm import tqdm

from lasad_jax.parallel import build_mesh, local_batch_size
from lasad_jax.parallel.rules import describe
from lasad_jax.parallel.state import abstract_with_shardings
from lasad_jax.sampling.generate import check_sampling_args, generate
from lasad_jax.sampling.images import make_grid, save_npz, save_png
from lasad_jax.tokenizers import build_tokenizer
from lasad_jax.training import checkpoint as ckpt_lib
from lasad_jax.training.loop import state_factory

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


def sample_images(model: nnx.Module, tokenizer: Any, labels: np.ndarray, cfg: Any,
                  mesh: Mesh | None = None) -> np.ndarray:
    """uint8 images `[len(labels), H, W, C]`, generated in batches of `cfg.batch_size`
    (split over `mesh`'s data axes when given; every process gets all the images)."""
    check_sampling_args(cfg_scale=cfg.cfg_scale, temperature=cfg.temperature, top_k=cfg.top_k,
                        top_p=cfg.top_p)
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


def sample_to_files(model: nnx.Module, tokenizer: Any, cfg: Any, *, num_classes: int,
                    out_dir: str, mesh: Mesh | None = None) -> dict[str, str]:
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


def open_checkpoint(workdir: str) -> ckpt_lib.Checkpointer:
    """The read-only checkpointer of `workdir`, or FileNotFoundError saying what to do."""
    ckpt_dir = os.path.join(workdir, "checkpoints")
    checkpointer = (ckpt_lib.Checkpointer(ckpt_dir, read_only=True)
                    if os.path.isdir(ckpt_dir) else None)
    if checkpointer is None or checkpointer.latest_step() is None:
        raise FileNotFoundError(f"no checkpoint in {ckpt_dir}: train first with --mode=train "
                                f"and the same --workdir")
    return checkpointer


def restore_model(config: Any, workdir: str) -> tuple[nnx.Module, int, Mesh]:
    """`(model, step, mesh)`: the newest checkpoint's weights (EMA per
    `config.sample.use_ema`), restored straight into the shardings of `config.mesh`,
    whatever mesh trained them."""
    checkpointer = open_checkpoint(workdir)
    mesh = build_mesh(config.get("mesh"))
    graphdef, init, _, _ = state_factory(config, config.optimizer.warmup_steps + 1)
    target, _ = abstract_with_shardings(init, mesh)
    step, restored = checkpointer.restore_params(target, use_ema=config.sample.use_ema)
    checkpointer.close()
    logging.info("restored step %d (%s weights) on mesh %s", step,
                 "EMA" if config.sample.use_ema else "raw", describe(mesh))
    return nnx.merge(graphdef, restored), step, mesh


def run_sampling(config: Any, workdir: str) -> dict[str, str]:
    """Restores the newest checkpoint in `workdir` and writes samples next to it."""
    tokenizer = build_tokenizer(config.tokenizer)  # fails fast, before any restore
    open_checkpoint(workdir).close()
    local_batch_size(config.sample.batch_size, build_mesh(config.get("mesh")),
                     "config.sample.batch_size")
    model, _, mesh = restore_model(config, workdir)
    return sample_to_files(model, tokenizer, config.sample, num_classes=config.data.num_classes,
                           out_dir=workdir, mesh=mesh)
