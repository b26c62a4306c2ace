"""`--mode=evaluate` and `--mode=reference_stats`: the ADM protocol from a checkpoint.

`--mode=evaluate` restores the newest checkpoint in the workdir, generates
`eval.num_samples` images (sharded over the mesh like `--mode=sample`), writes them as an
ADM sample batch (`workdir/eval/{eval.name}.npz`, `arr_0` uint8 NHWC plus `labels`) and
scores them against `eval.reference`: FID, sFID, Inception Score, precision and recall,
saved to `workdir/eval/{eval.name}.json`.

Decisions (the paper and ADM leave them open):

* Labels cycle through the classes (`i % num_classes`), so 50,000 ImageNet samples hold
  50 of each class and any prefix of the run is class-balanced.
* Generation is resumable: images go to `workdir/eval/{eval.name}/part_*.npz`, each written
  atomically; a restarted run skips finished parts. Batch `i` draws from
  `fold_in(key(eval.seed), i)`, so a resumed run gives the images an uninterrupted one
  would. A settings file in the directory makes a run with other settings (checkpoint
  step, guidance, seed, ...) refuse to mix its images in.
* `eval.inception="random"` runs the network with seeded random weights. That exercises
  the pipeline where the real weights cannot be had (the CPU demo); its numbers compare
  only with other numbers from the same random network and are labelled as such.
"""

from __future__ import annotations

import json
import math
import os
import zipfile
from collections.abc import Iterator
from typing import Any

import jax
import numpy as np
from absl import logging
from tqdm import tqdm

from lasad_jax.evaluation.evaluator import evaluate, reference_statistics
from lasad_jax.evaluation.inception import InceptionV3, random_inception
from lasad_jax.evaluation.reference import ADM_REFERENCE_URL, load_reference, write_reference

RANDOM_INCEPTION = "random"


def reference_path(config: Any, workdir: str) -> str:
    """`eval.reference`, or `workdir/reference_stats.npz` when empty."""
    return config.eval.reference or os.path.join(workdir, "reference_stats.npz")


def load_network(config: Any) -> tuple[InceptionV3, str]:
    """The Inception network of `eval.inception` and how to describe it in results."""
    path = config.eval.inception
    preprocess = config.eval.get("preprocess", "adm")
    if path == RANDOM_INCEPTION:
        logging.warning("eval.inception='random': Inception with random weights; the "
                        "numbers test the pipeline and are NOT comparable to published FIDs")
        return random_inception(0, preprocess), "random weights (seed 0): not comparable"
    from lasad_jax.convert.inception import load_inception

    return load_inception(path, preprocess), os.path.abspath(path)


# -- reference statistics of a dataset


def dataset_images(config: Any, split: str, limit: int) -> Iterator[np.ndarray]:
    """uint8 RGB batches `[B, H, W, 3]` of `split` at the generator's image size, as
    the samples will look: the embedded digits and shapes go through the tokenizer (so
    the reference holds the grey levels the model can draw); image datasets get the ADM
    centre crop."""
    from lasad_jax.data.images import adm_center_crop, build_image_source
    from lasad_jax.data.pipeline import EMBEDDED, load_embedded
    from lasad_jax.tokenizers import build_tokenizer

    if config.data.name in EMBEDDED:
        tokenizer = build_tokenizer(config.tokenizer)
        images = load_embedded(config.data, split)[0]
        images = tokenizer.decode(tokenizer.encode(images[:limit or None]))
        yield np.repeat(images, 3, axis=-1) if images.shape[-1] == 1 else images
        return
    source = build_image_source(config.data, split)
    size = int(config.tokenizer.image_size[0])
    n = len(source) if not limit else min(limit, len(source))
    batch = []
    for i in range(n):
        batch.append(adm_center_crop(source[i]["image"], size))
        if len(batch) == 256 or i == n - 1:
            yield np.stack(batch)
            batch = []


def run_reference_stats(config: Any, workdir: str) -> str:
    """Writes the reference statistics of `eval.reference_split`; returns the path."""
    model, described = load_network(config)
    path = reference_path(config, workdir)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    images = dataset_images(config, config.eval.reference_split, config.eval.reference_limit)
    stats = reference_statistics(images, model, batch_size=config.eval.inception_batch_size)
    stats["inception"] = described
    write_reference(path, stats)
    logging.info("reference statistics of %d %s images (Inception: %s) written to %s",
                 stats["num_images"], config.eval.reference_split, described, path)
    return path


# -- generating the sample batch


def eval_labels(num_samples: int, num_classes: int) -> np.ndarray:
    return (np.arange(num_samples) % num_classes).astype(np.int32)


def _settings(config: Any, step: int) -> dict[str, Any]:
    s = config.sample
    return {"checkpoint_step": int(step), "num_samples": int(config.eval.num_samples),
            "seed": int(config.eval.seed), "batch_size": int(s.batch_size),
            "cfg_scale": float(s.cfg_scale), "temperature": float(s.temperature),
            "top_k": int(s.top_k), "top_p": float(s.top_p), "use_ema": bool(s.use_ema),
            "mixer": config.model.mixer}


def _check_settings(part_dir: str, settings: dict[str, Any]) -> None:
    path = os.path.join(part_dir, "settings.json")
    if os.path.exists(path):
        with open(path) as f:
            old = json.load(f)
        if old != settings:
            diff = {k: (old.get(k), v) for k, v in settings.items() if old.get(k) != v}
            raise ValueError(
                f"{part_dir} holds samples made with other settings {diff} (old, new); "
                "set another --config.eval.name or delete the directory")
        return
    with open(path + ".tmp", "w") as f:
        json.dump(settings, f, indent=1)
    os.replace(path + ".tmp", path)


def _save_part(path: str, images: np.ndarray, labels: np.ndarray) -> None:
    tmp = path + ".tmp.npz"
    np.savez(tmp, images=images, labels=labels)
    os.replace(tmp, path)


def generate_parts(model: Any, tokenizer: Any, config: Any, part_dir: str, mesh: Any) -> int:
    """Generates the missing parts of the sample batch; returns how many were made."""
    from lasad_jax.sampling.generate import generate

    n, bs = config.eval.num_samples, config.sample.batch_size
    per_part = max(1, config.eval.part_size // bs)   # batches per part
    num_batches = math.ceil(n / bs)
    num_parts = math.ceil(num_batches / per_part)
    labels = eval_labels(n, config.data.num_classes)
    base = jax.random.key(config.eval.seed)
    made = 0
    todo = [p for p in range(num_parts)
            if not os.path.exists(os.path.join(part_dir, f"part_{p:05d}.npz"))]
    logging.info("%d samples in %d parts: %d done, %d to generate", n, num_parts,
                 num_parts - len(todo), len(todo))
    def batches(p: int) -> range:
        return range(p * per_part, min((p + 1) * per_part, num_batches))

    bar = tqdm(total=sum(len(batches(p)) for p in todo), desc="generating", unit="batch",
               disable=jax.process_index() != 0)
    for p in todo:
        images, part_labels = [], []
        for b in batches(p):
            chunk = labels[b * bs:(b + 1) * bs]
            padded = np.pad(chunk, (0, bs - len(chunk)), mode="edge")
            codes = generate(model, padded, jax.random.fold_in(base, b),
                             cfg_scale=config.sample.cfg_scale,
                             temperature=config.sample.temperature, top_k=config.sample.top_k,
                             top_p=config.sample.top_p, mesh=mesh)
            images.append(tokenizer.decode(codes[:len(chunk)]))
            part_labels.append(chunk)
            bar.update(1)
        if jax.process_index() == 0:
            batch = np.concatenate(images)
            if batch.shape[-1] == 1:
                batch = np.repeat(batch, 3, axis=-1)
            _save_part(os.path.join(part_dir, f"part_{p:05d}.npz"), batch.astype(np.uint8),
                       np.concatenate(part_labels))
        made += 1
    bar.close()
    return made


def assemble(part_dir: str, out_path: str, num_samples: int) -> None:
    """Joins the parts into one ADM sample batch without holding it in memory: `arr_0` is
    written to a memory-mapped `.npy`, then stored (uncompressed) into the `.npz`."""
    parts = sorted(f for f in os.listdir(part_dir) if f.startswith("part_")
                   and f.endswith(".npz") and ".tmp" not in f)
    with np.load(os.path.join(part_dir, parts[0])) as first:
        shape = (num_samples, *first["images"].shape[1:])
    npy = out_path + ".arr_0.npy"
    images = np.lib.format.open_memmap(npy, mode="w+", dtype=np.uint8, shape=shape)
    labels = np.zeros((num_samples,), np.int32)
    at = 0
    for name in parts:
        with np.load(os.path.join(part_dir, name)) as part:
            k = len(part["labels"])
            images[at:at + k] = part["images"]
            labels[at:at + k] = part["labels"]
            at += k
    if at != num_samples:
        raise ValueError(f"{part_dir}: parts hold {at} samples, expected {num_samples}")
    images.flush()
    del images
    tmp = out_path + ".tmp"
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
        zf.write(npy, "arr_0.npy")
        with zf.open("labels.npy", "w") as f:
            np.lib.format.write_array(f, labels)
    os.replace(tmp, out_path)
    os.remove(npy)


def run_evaluation(config: Any, workdir: str) -> dict[str, Any]:
    """Generates (or resumes) the sample batch of the newest checkpoint and scores it."""
    from lasad_jax.sampling.job import open_checkpoint, restore_model
    from lasad_jax.tokenizers import build_tokenizer

    # Everything that can fail cheaply fails before any image is generated.
    tokenizer = build_tokenizer(config.tokenizer)
    ref_path = reference_path(config, workdir)
    if not os.path.isfile(ref_path):
        raise FileNotFoundError(
            f"no reference statistics at {ref_path}: set config.eval.reference to ADM's "
            f"VIRTUAL_imagenet256_labeled.npz ({ADM_REFERENCE_URL}) or make statistics of "
            "the training images first with --mode=reference_stats and the same --workdir")
    reference = load_reference(ref_path)
    network, described = load_network(config)
    if reference.inception is not None and (
            reference.inception.startswith("random") != described.startswith("random")):
        raise ValueError(f"{reference.path} was made with Inception {reference.inception!r} "
                         f"but config.eval.inception gives {described!r}; make the reference "
                         "with the same network (--mode=reference_stats)")
    open_checkpoint(workdir).close()
    model, step, mesh = restore_model(config, workdir)

    out_dir = os.path.join(workdir, "eval")
    part_dir = os.path.join(out_dir, config.eval.name)
    os.makedirs(part_dir, exist_ok=True)
    settings = _settings(config, step)
    _check_settings(part_dir, settings)
    generate_parts(model, tokenizer, config, part_dir, mesh)
    if jax.process_index() != 0:
        return {}
    samples = os.path.join(out_dir, f"{config.eval.name}.npz")
    assemble(part_dir, samples, config.eval.num_samples)
    metrics = evaluate(samples, reference, network, batch_size=config.eval.inception_batch_size)
    result = {**{k: float(v) for k, v in metrics.items()}, **settings,
              "reference": reference.path, "inception": described, "samples": samples}
    with open(os.path.join(out_dir, f"{config.eval.name}.json"), "w") as f:
        json.dump(result, f, indent=1)
    logging.info("| step | samples | cfg | FID | sFID | IS | precision | recall |")
    logging.info("| %d | %d | %.2f | %.2f | %.2f | %.2f | %.3f | %.3f |", step,
                 config.eval.num_samples, config.sample.cfg_scale, result["fid"],
                 result["sfid"], result["inception_score"], result["precision"],
                 result["recall"])
    return result
