"""Drawing the images of a `sample` block from a model: labels, batches, files.

Images are generated class by class (`per_class` of each class in `sample.classes`, all
classes when empty), in fixed-size batches so one compiled program serves every batch.
Batch `i` draws from `fold_in(PRNGKey(sample.seed), i)`: the same config, seed and batch
size give the same images.

The files are named by the checkpoint step and a digest of the settings
(`sample_paths`) and record the settings, so a draw never replaces another, and the same
draw again (a finished training run restarted, `--mode=sample` repeated) writes nothing.
`sample_grid` is the small grid training shows in TensorBoard at each evaluation.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from flax import nnx
from jax.experimental import multihost_utils
from jax.sharding import Mesh
from tqdm import tqdm

from lasad_jax.files import exists, require_space, require_writable
from lasad_jax.parallel.mesh import batch_shards, process_0_decides
from lasad_jax.sampling.checks import class_problems
from lasad_jax.sampling.config import SampleConfig
from lasad_jax.sampling.generate import generate
from lasad_jax.sampling.images import make_grid, save_npz, save_png
from lasad_jax.tokenizers import Tokenizer

GRID_MAX = 16  # the PNG shows at most 16 classes x 16 samples; the npz holds them all


def class_list(classes: Any, per_class: int, num_classes: int) -> np.ndarray:
    """Class-major label list: `per_class` copies of each requested class."""
    classes = list(classes) if classes else list(range(num_classes))
    problems = class_problems(classes, num_classes, "sample.classes")
    if problems:
        raise ValueError(problems[0])
    if per_class < 1:
        raise ValueError(f"sample.per_class must be >= 1, got {per_class}")
    return np.repeat(np.asarray(classes, np.int32), per_class)


def sample_images(model: nnx.Module, tokenizer: Tokenizer, labels: np.ndarray,
                  cfg: SampleConfig, mesh: Mesh | None = None, *,
                  progress: bool = True) -> np.ndarray:
    """uint8 images `[len(labels), H, W, C]`, generated in batches of `cfg.batch_size`
    (split over `mesh`'s data axes when given; every process gets all the images)."""
    bs = cfg.batch_size
    base = jax.random.key(cfg.seed)
    out = []
    batches = range(0, len(labels), bs)
    quiet = jax.process_index() != 0 or not progress
    for i, start in enumerate(tqdm(batches, desc="sampling", unit="batch", disable=quiet)):
        chunk = labels[start:start + bs]
        padded = np.pad(chunk, (0, bs - len(chunk)), mode="edge")
        codes = generate(model, jnp.asarray(padded), jax.random.fold_in(base, i),
                         cfg_scale=cfg.cfg_scale, temperature=cfg.temperature,
                         top_k=cfg.top_k, top_p=cfg.top_p, mesh=mesh)
        out.append(tokenizer.decode(codes[:len(chunk)]))
    return np.concatenate(out)


# The model fields outside the checkpoint identity (`training.generator.ARCHITECTURE`)
# that still change the drawn tokens: the compute and decoding-state precision and the
# decoding step. A bfloat16 draw of the same checkpoint is another draw, so they belong
# in the settings that name and guard sample files.
NUMERICS = ("dtype", "decode_state_dtype", "decode_impl")


def model_numerics(model_cfg: Any) -> dict[str, str]:
    """The `NUMERICS` fields of a ModelConfig, as recorded with the samples."""
    return {name: str(getattr(model_cfg, name)) for name in NUMERICS}


_HASH_MULTIPLIER = 0x9E3779B1  # odd: every index gets its own weight modulo 2**32
_UNSIGNED = {1: jnp.uint8, 2: jnp.uint16, 4: jnp.uint32}


@jax.jit
def _checksums(leaves: list[jax.Array]) -> jax.Array:
    """A position-weighted sum of each array's bit patterns, modulo 2**32. Integer sums
    are exact in any order, so the value does not depend on how the array is sharded or
    reduced (a float sum would change with the mesh)."""
    sums = []
    for x in leaves:
        bits = jax.lax.bitcast_convert_type(x, _UNSIGNED[x.dtype.itemsize])
        bits = bits.reshape(-1).astype(jnp.uint32)
        index = jnp.arange(bits.size, dtype=jnp.uint32)
        sums.append(jnp.sum(bits * (index * jnp.uint32(_HASH_MULTIPLIER) + 1),
                            dtype=jnp.uint32))
    return jnp.stack(sums)


def weights_fingerprint(model: nnx.Module) -> str:
    """`sha256:...` of the model's parameters: which weights drew a set of images. The
    checkpoint step and the config do not tell two runs apart (another seed, or a new
    run in a workdir whose checkpoints were moved away), so sample files and evaluation
    parts record this too, and another run's files are never taken for this one's. One
    pass over the weights on their devices; only a number per array reaches the host."""
    params = jax.tree_util.tree_leaves_with_path(nnx.state(model, nnx.Param))
    # Gathered rather than read: on several hosts the result need not be addressable.
    sums = (multihost_utils.process_allgather(_checksums([x for _, x in params]), tiled=True)
            if params else [])
    record = [[jax.tree_util.keystr(path), x.dtype.name, list(x.shape), int(total)]
              for (path, x), total in zip(params, sums)]
    return "sha256:" + hashlib.sha256(json.dumps(record).encode()).hexdigest()


def sample_settings(cfg: SampleConfig, *, step: int, num_classes: int,
                    tokenizer: Tokenizer, model_cfg: Any, weights: str) -> dict[str, Any]:
    """Everything that decides the images of `sample_to_files` (and their grid): the
    checkpoint step, the `sample` block, the model's numerics (`NUMERICS`: not part of
    the checkpoint, yet they change the tokens), the weights (`weights_fingerprint`)
    and the tokenizer that decodes them."""
    return {"checkpoint_step": int(step), "weights": weights,
            "classes": [int(c) for c in (cfg.classes or range(num_classes))],
            "per_class": cfg.per_class, "batch_size": cfg.batch_size,
            "cfg_scale": float(cfg.cfg_scale), "temperature": float(cfg.temperature),
            "top_k": int(cfg.top_k), "top_p": float(cfg.top_p), "seed": cfg.seed,
            "use_ema": cfg.use_ema, "grid_scale": cfg.grid_scale,
            **model_numerics(model_cfg), "tokenizer": tokenizer.fingerprint}


def sample_paths(out_dir: str, name: str, settings: dict[str, Any]) -> dict[str, str]:
    """`{name}-step{step}-{digest}.png` and `.npz`: the checkpoint step, and 8 hex
    digits of the settings' hash, so draws of other steps or settings never overwrite
    each other (the files record the settings themselves)."""
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:8]
    stem = os.path.join(out_dir, f"{name}-step{settings['checkpoint_step']}-{digest}")
    return {"png": stem + ".png", "npz": stem + ".npz"}


def sample_to_files(model: nnx.Module, tokenizer: Tokenizer, cfg: SampleConfig, *,
                    num_classes: int, out_dir: str, step: int,
                    mesh: Mesh | None = None) -> dict[str, str]:
    """Generates per `cfg` (the `sample` config block) from the weights of checkpoint
    `step`; writes `{cfg.name}-step{step}-{digest}.png` (one row per class) and `.npz`
    into `out_dir` (`sample_paths`) and returns their paths.

    Files that already exist are the same draw (same step, weights, settings, model
    numerics and tokenizer): nothing is generated or written, and their paths are
    returned. With
    several processes all of them generate and process 0 alone writes (the others
    return {}).
    """
    settings = sample_settings(cfg, step=step, num_classes=num_classes, tokenizer=tokenizer,
                               model_cfg=model.cfg, weights=weights_fingerprint(model))
    paths = sample_paths(out_dir, cfg.name, settings)
    if process_0_decides(all(exists(p) for p in paths.values())):
        logging.info("%s exists (the same weights and settings): nothing to draw",
                     paths["png"])
        return paths if jax.process_index() == 0 else {}
    labels = class_list(cfg.classes, cfg.per_class, num_classes)
    if jax.process_index() == 0:  # a full or read-only disk is found before generating
        require_writable(out_dir)
        image_bytes = len(labels) * int(np.prod(tokenizer.image_shape[:2])) * 3
        require_space(out_dir, 2 * image_bytes + 4096, f"the samples {paths['npz']}")
    images = sample_images(model, tokenizer, labels, cfg, mesh)
    if jax.process_index() != 0:
        return {}
    cols = min(cfg.per_class, GRID_MAX)
    n_cls = min(len(labels) // cfg.per_class, GRID_MAX)
    shown = [c * cfg.per_class + j for c in range(n_cls) for j in range(cols)]
    text = json.dumps(settings, sort_keys=True)
    save_npz(paths["npz"], images, labels, settings=text)
    save_png(paths["png"], make_grid(images[shown], cols=cols, scale=cfg.grid_scale),
             text={"lasad_sample_settings": text})
    logging.info("wrote %s and %s", paths["png"], paths["npz"])
    return paths


def sample_grid(model: nnx.Module, tokenizer: Tokenizer, cfg: SampleConfig, *,
                num_classes: int, mesh: Mesh | None = None, classes: int = 8,
                per_class: int = 4) -> np.ndarray:
    """A small uint8 grid, `per_class` images of each of the first `classes` classes
    (one row each) with `cfg`'s sampling settings: what training shows in TensorBoard at
    each evaluation. Batches are `cfg.batch_size` (the program `sample_to_files` compiles
    too) when the mesh's data shards divide it, else the grid padded to a multiple."""
    shards = batch_shards(mesh) if mesh is not None else 1
    n = min(classes, num_classes) * per_class
    batch = cfg.batch_size if cfg.batch_size % shards == 0 else -(-n // shards) * shards
    small = dataclasses.replace(cfg, classes=tuple(range(min(classes, num_classes))),
                                per_class=per_class, batch_size=batch)
    labels = class_list(small.classes, per_class, num_classes)
    images = sample_images(model, tokenizer, labels, small, mesh, progress=False)
    return make_grid(images, cols=per_class, scale=1)
