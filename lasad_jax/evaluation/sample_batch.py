"""The ADM sample batch of `--mode=evaluate`, generated resumably, part by part.

Decisions:

* Labels cycle through the classes (`i % num_classes`), so 50,000 ImageNet samples hold
  50 of each class and any prefix of the run is class-balanced. This deviates from
  LlamaGen, whose sampler draws each label uniformly at random (about 50 per class, not
  exactly): class balance removes one source of run-to-run FID noise, but the numbers
  are not drawn exactly as LlamaGen's were.
* With `eval.image_size` set, each batch is resized (`evaluation.resize`, LlamaGen's
  bicubic) before it is written, so the parts and the assembled batch hold the images
  that are scored, as LlamaGen's 384 px sample batches hold 256 px images.
* Generation is resumable: images go to `part_*.npz` files, each written atomically; a
  restarted run skips finished parts. Batch `i` draws from `fold_in(key(eval.seed), i)`,
  so a resumed run gives the images an uninterrupted one would. A settings file in the
  directory (checkpoint step, tokenizer fingerprint, guidance, seed, ...) makes a run
  with other settings refuse to mix its images in, naming what differs. `generate_parts`
  adds to it what only it sees: the model's numerics (dtype, decoding-state dtype and
  step, which change the tokens without being part of the checkpoint) and the part
  size (which decides what each part file holds).
* `assemble` joins the parts into ADM's layout (`arr_0` uint8 NHWC plus `labels`)
  without holding the batch in memory.
* The directory may be a `gs://` URL (a TPU run's workdir): settings and parts are
  read, listed and written through `lasad_jax.files`, and the batch is assembled on
  local disk (`staging_path`) and then uploaded whole.
"""

from __future__ import annotations

import io
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
from lasad_jax.evaluation.resize import resize_bicubic
from lasad_jax import files
from lasad_jax.files import as_output_error, require_space, save_json, save_npz, write_atomically
from lasad_jax.sampling.config import SampleConfig
from lasad_jax.sampling.generate import generate
from lasad_jax.sampling.sampler import NUMERICS, model_numerics, weights_fingerprint
from lasad_jax.tokenizers import Tokenizer


def eval_labels(num_samples: int, num_classes: int) -> np.ndarray:
    """Class `i % num_classes` for sample `i`: balanced (LlamaGen draws them at random)."""
    return (np.arange(num_samples) % num_classes).astype(np.int32)


def batch_settings(ev: EvalConfig, s: SampleConfig, *, step: int, mixer: str,
                   tokenizer: str, model_cfg: Any = None,
                   weights: str | None = None) -> dict[str, Any]:
    """What makes a sample batch: the generator's checkpoint step, the fingerprint of the
    tokenizer that decodes it, the sampling settings and `eval.image_size` (the resize
    changes what the parts hold); with `model_cfg`, also the model's numerics
    (`sampling.sampler.NUMERICS`), and with `weights` the weights' fingerprint
    (`sampling.sampler.weights_fingerprint`), so the results file records them. A run
    with other settings must not add to it."""
    settings = {"checkpoint_step": int(step), "num_samples": int(ev.num_samples),
                "seed": int(ev.seed), "batch_size": int(s.batch_size),
                "cfg_scale": float(s.cfg_scale), "temperature": float(s.temperature),
                "top_k": int(s.top_k), "top_p": float(s.top_p), "use_ema": bool(s.use_ema),
                "mixer": mixer, "tokenizer": tokenizer}
    settings["image_size"] = int(ev.image_size)  # 0: the tokenizer's size (`IMPLIED`)
    if model_cfg is not None:
        settings.update(model_numerics(model_cfg))
    if weights is not None:
        settings["weights"] = weights
    return settings


def settings_differences(old: dict[str, Any], new: dict[str, Any]) -> str:
    """`field: old -> new, ...` for the fields that differ (fingerprints shortened)."""
    def show(value: Any) -> str:
        return value[:19] if isinstance(value, str) and value.startswith("sha256:") else repr(value)

    return ", ".join(f"{k}: {show(old.get(k))} -> {show(v)}" for k, v in new.items()
                     if old.get(k) != v)


# What a record made before a field was recorded meant by leaving it out: samples at the
# tokenizer's size were all there was before `eval.image_size`.
IMPLIED = {"image_size": 0}


def with_implied(record: dict[str, Any]) -> dict[str, Any]:
    """A settings or results record with the fields it predates (`IMPLIED`) filled in."""
    return {**IMPLIED, **record}


def read_settings(part_dir: str) -> dict[str, Any] | None:
    """The settings a part directory recorded (None for a new one)."""
    path = os.path.join(part_dir, "settings.json")
    if not files.exists(path):
        return None
    return with_implied(json.loads(files.read_bytes(path)))


# Fields records made before them lack: such a record is taken to have the current ones,
# as `generate_parts` does, rather than refused for lacking them.
RECORDED_LATER = (*NUMERICS, "weights", "inception_digest")


def comparable(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """The fields of `new` to compare with the record `old`: all but those of
    `RECORDED_LATER` that `old` predates."""
    return {k: v for k, v in new.items() if k in old or k not in RECORDED_LATER}


def matches(old: dict[str, Any], new: dict[str, Any]) -> bool:
    """Whether the record `old` agrees with `new` on every field it can be compared on
    (`comparable`)."""
    return all(old.get(k) == v for k, v in comparable(old, new).items())


def check_settings(part_dir: str, settings: dict[str, Any]) -> None:
    """Refuses a part directory made with other settings (reads only). Only the fields of
    `settings` are compared: the ones `generate_parts` records are its own to check."""
    old = read_settings(part_dir)
    if old is not None and not matches(old, settings):
        diff = settings_differences(old, comparable(old, settings))
        raise ValueError(f"{part_dir} holds samples made with other settings ({diff}); "
                         "set another config.eval.name, or delete the directory")


def record_settings(part_dir: str, settings: dict[str, Any]) -> None:
    """Writes `settings` into a new part directory (`check_settings` first)."""
    path = os.path.join(part_dir, "settings.json")
    if not files.exists(path):
        save_json(path, settings)  # which creates the directory


def generate_parts(model: Any, tokenizer: Tokenizer, ev: EvalConfig, sample: SampleConfig, *,
                   num_classes: int, part_dir: str, mesh: Any,
                   weights: str | None = None) -> int:
    """Generates the missing parts of the sample batch; returns how many were made.
    `weights`: the model's `weights_fingerprint` when the caller has it already.

    Before anything is generated, the model's numerics, its weights' fingerprint and
    `ev.part_size` are checked against those the directory's settings recorded, and
    recorded where missing: parts of another dtype or of another run's weights (a new
    run in a workdir whose checkpoints were moved away) hold other images, and parts of
    another size other sample ranges (a resumed run would overlap them). A directory
    written before they were recorded takes the current ones; `assemble` still counts
    its samples."""
    own = {**model_numerics(model.cfg), "weights": weights or weights_fingerprint(model),
           "part_size": int(ev.part_size)}
    old = read_settings(part_dir) or {}
    check_settings(part_dir, {k: v for k, v in own.items() if k in old})
    if jax.process_index() == 0 and any(k not in old for k in own):
        save_json(os.path.join(part_dir, "settings.json"), {**old, **own})
    n, bs = ev.num_samples, sample.batch_size
    per_part = max(1, ev.part_size // bs)   # batches per part
    num_batches = math.ceil(n / bs)
    num_parts = math.ceil(num_batches / per_part)
    labels = eval_labels(n, num_classes)
    base = jax.random.key(ev.seed)
    made = 0
    todo = [p for p in range(num_parts)
            if not files.exists(os.path.join(part_dir, f"part_{p:05d}.npz"))]
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
            decoded = tokenizer.decode(codes[:len(chunk)])
            if ev.image_size and jax.process_index() == 0:  # only process 0 writes
                decoded = resize_bicubic(decoded, ev.image_size)
            images.append(decoded)
            part_labels.append(chunk)
            bar.update(1)
        if jax.process_index() == 0:
            batch = np.concatenate(images)
            if batch.shape[-1] == 1:
                batch = np.repeat(batch, 3, axis=-1)
            save_npz(os.path.join(part_dir, f"part_{p:05d}.npz"), images=batch.astype(np.uint8),
                     labels=np.concatenate(part_labels))
        made += 1
    bar.close()
    return made


def _load_part(path: str) -> Any:
    """A part's open npz: lazily from a local file; a remote one is downloaded whole (one
    part, not the batch), since np.load needs a seekable file."""
    if files.is_remote(path):
        return np.load(io.BytesIO(files.read_bytes(path)))
    return np.load(path)


def staging_path(url: str) -> str:
    """Where the batch of the remote `url` is assembled before its upload: a local file
    in the cache (`files.cache_root()`), named after the URL."""
    return os.path.join(files.cache_root(), "staging", files.cache_name(url))


def assemble(part_dir: str, out_path: str, num_samples: int) -> None:
    """Joins the parts into one ADM sample batch without holding it in memory: `arr_0` is
    written to a memory-mapped `.npy`, then stored (uncompressed) into the `.npz`. A
    remote `out_path` is assembled at `staging_path` (memory maps need a local disk),
    uploaded in one go, and the local file removed."""
    if files.is_remote(out_path):
        staged = staging_path(out_path)
        os.makedirs(os.path.dirname(staged), exist_ok=True)
        try:
            assemble(part_dir, staged, num_samples)
            files.upload_file(staged, out_path)
        finally:
            if os.path.exists(staged):
                os.remove(staged)
        return
    parts = sorted(f for f in files.listdir(part_dir) if f.startswith("part_")
                   and f.endswith(".npz") and ".tmp" not in f)
    # The counts first (the labels are small): parts of another layout would overlap.
    counts = []
    for name in parts:
        with _load_part(os.path.join(part_dir, name)) as part:
            counts.append(len(part["labels"]))
    if sum(counts) != num_samples:
        why = ("parts of another run are mixed in" if sum(counts) > num_samples
               else "some parts are missing")
        raise ValueError(f"{part_dir}: its {len(parts)} parts hold {sum(counts)} samples, "
                         f"expected {num_samples} ({why}); delete the directory, or set "
                         "another config.eval.name")
    with _load_part(os.path.join(part_dir, parts[0])) as first:
        shape = (num_samples, *first["images"].shape[1:])
    needed = int(np.prod(shape))
    require_space(files.parent(out_path), 2 * needed,
                  f"assembling {out_path}")
    npy = out_path + ".arr_0.npy"
    try:
        images = np.lib.format.open_memmap(npy, mode="w+", dtype=np.uint8, shape=shape)
    except OSError as err:
        raise as_output_error(err, npy, needed) from err
    labels = np.zeros((num_samples,), np.int32)
    at = 0
    for name in parts:
        with _load_part(os.path.join(part_dir, name)) as part:
            k, held = len(part["labels"]), part["images"]
            if held.shape[1:] != shape[1:]:  # a part copied in by hand (settings guard the rest)
                del images
                os.remove(npy)
                raise ValueError(
                    f"{part_dir}: {name} holds images of shape {held.shape[1:]}, {parts[0]} "
                    f"of {shape[1:]} (parts of another eval.image_size or tokenizer are mixed "
                    "in); delete the directory, or set another config.eval.name")
            images[at:at + k] = held
            labels[at:at + k] = part["labels"]
            at += k
    images.flush()
    del images

    def write(f) -> None:
        with zipfile.ZipFile(f, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
            zf.write(npy, "arr_0.npy")
            with zf.open("labels.npy", "w") as member:
                np.lib.format.write_array(member, labels)

    try:
        write_atomically(out_path, write, nbytes=needed + labels.nbytes)
    finally:
        os.remove(npy)


