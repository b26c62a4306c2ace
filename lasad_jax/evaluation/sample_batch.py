"""The ADM sample batch of `--mode=evaluate`, generated resumably, part by part.

Decisions (the paper and ADM leave them open):

* Labels cycle through the classes (`i % num_classes`), so 50,000 ImageNet samples hold
  50 of each class and any prefix of the run is class-balanced.
* Generation is resumable: images go to `part_*.npz` files, each written atomically; a
  restarted run skips finished parts. Batch `i` draws from `fold_in(key(eval.seed), i)`,
  so a resumed run gives the images an uninterrupted one would. A settings file in the
  directory makes a run with other settings (checkpoint step, guidance, seed, ...)
  refuse to mix its images in.
* `assemble` joins the parts into ADM's layout (`arr_0` uint8 NHWC plus `labels`)
  without holding the batch in memory.
"""

from __future__ import annotations

import json
import math
import os
import zipfile
from typing import Any

import jax
import numpy as np
from absl import logging
from tqdm import tqdm

from lasad_jax.evaluation.config import EvalConfig
from lasad_jax.sampling.config import SampleConfig
from lasad_jax.sampling.generate import generate
from lasad_jax.tokenizers import Tokenizer


def eval_labels(num_samples: int, num_classes: int) -> np.ndarray:
    return (np.arange(num_samples) % num_classes).astype(np.int32)


def batch_settings(ev: EvalConfig, s: SampleConfig, *, step: int, mixer: str) -> dict[str, Any]:
    """What makes a sample batch: a run with other settings must not add to it."""
    return {"checkpoint_step": int(step), "num_samples": int(ev.num_samples),
            "seed": int(ev.seed), "batch_size": int(s.batch_size),
            "cfg_scale": float(s.cfg_scale), "temperature": float(s.temperature),
            "top_k": int(s.top_k), "top_p": float(s.top_p), "use_ema": bool(s.use_ema),
            "mixer": mixer}


def check_settings(part_dir: str, settings: dict[str, Any]) -> None:
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


def generate_parts(model: Any, tokenizer: Tokenizer, ev: EvalConfig, sample: SampleConfig, *,
                   num_classes: int, part_dir: str, mesh: Any) -> int:
    """Generates the missing parts of the sample batch; returns how many were made."""
    n, bs = ev.num_samples, sample.batch_size
    per_part = max(1, ev.part_size // bs)   # batches per part
    num_batches = math.ceil(n / bs)
    num_parts = math.ceil(num_batches / per_part)
    labels = eval_labels(n, num_classes)
    base = jax.random.key(ev.seed)
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
                             cfg_scale=sample.cfg_scale, temperature=sample.temperature,
                             top_k=sample.top_k, top_p=sample.top_p, mesh=mesh)
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


