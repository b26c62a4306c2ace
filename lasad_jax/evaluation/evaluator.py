"""Inception features of image sets, and the ADM-protocol metrics between two sets.

    model = load_inception("inception_fid.npz")          # lasad_jax.evaluation.weights
    scores = evaluate("samples.npz", "VIRTUAL_imagenet256_labeled.npz", model)
    # {'fid': ..., 'sfid': ..., 'inception_score': ..., 'precision': ..., 'recall': ...}

Features are computed with one jitted program for every batch: batches have a fixed size
(the last one is padded with black images whose outputs are dropped), so a 50k-sample run
compiles once. The next batch is dispatched before the previous one is copied back, so the
host's reading of the next batch overlaps the device's work.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import jax
import numpy as np
from flax import nnx
from tqdm import tqdm

from lasad_jax.data.image_batches import uniform_subset
from lasad_jax.evaluation import metrics
from lasad_jax.evaluation.inception import InceptionV3
from lasad_jax.evaluation.reference import (
    Reference,
    iter_npz_batches,
    load_reference,
    npz_array_shape,
)

Images = np.ndarray | jax.Array | Iterable[np.ndarray] | str | os.PathLike
FEATURE_KEYS = ("pool", "spatial", "logits")


@functools.partial(jax.jit, static_argnums=0)
def _forward(graphdef: nnx.GraphDef, state: nnx.State, images: jax.Array
             ) -> dict[str, jax.Array]:
    return nnx.merge(graphdef, state)(images)


def _image_source(images: Images, batch_size: int) -> tuple[Iterable[np.ndarray], int | None]:
    """(an iterable of image batches of any size, the number of images if known)."""
    if isinstance(images, (str, os.PathLike)):
        return iter_npz_batches(images, batch_size), npz_array_shape(images)[0]
    if isinstance(images, (np.ndarray, jax.Array)):
        return (images[i:i + batch_size] for i in range(0, len(images), batch_size)), len(images)
    return images, None


def _rebatch(batches: Iterable[np.ndarray], batch_size: int) -> Iterator[np.ndarray]:
    """Regroups batches of any sizes into batches of exactly `batch_size` (the last may be
    shorter), so the jitted program sees one shape."""
    pending: list[np.ndarray] = []
    count = 0
    for batch in batches:
        batch = np.asarray(batch)
        if batch.ndim != 4 or batch.shape[-1] != 3:
            raise ValueError(f"expected image batches [B, H, W, 3] (uint8 or float in "
                             f"[0, 255]), got shape {batch.shape}")
        pending.append(batch)
        count += len(batch)
        while count >= batch_size:
            joined = np.concatenate(pending) if len(pending) > 1 else pending[0]
            yield joined[:batch_size]
            rest = joined[batch_size:]
            pending, count = ([rest] if len(rest) else []), len(rest)
    if count:
        yield np.concatenate(pending) if len(pending) > 1 else pending[0]


def compute_features(images: Images, inception_model: InceptionV3, batch_size: int = 200,
                     *, desc: str = "inception features") -> dict[str, np.ndarray]:
    """Inception features of every image: {'pool' [N, 2048], 'spatial' [N, 2023],
    'logits' [N, 1008]} as float32 numpy arrays.

    `images`: uint8 (or float in [0, 255]) NHWC RGB, as one array, an iterable of batches
    of any sizes, or the path of an `.npz` whose `arr_0` is streamed (ADM's sample
    format). All images must share one size (another size compiles another program).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    graphdef, state = nnx.split(inception_model)
    source, total = _image_source(images, batch_size)
    out: dict[str, list[np.ndarray]] = {k: [] for k in FEATURE_KEYS}

    def collect(result: dict[str, jax.Array], n: int) -> None:
        for k in FEATURE_KEYS:
            out[k].append(np.asarray(result[k][:n], np.float32))

    in_flight: tuple[dict[str, jax.Array], int] | None = None
    with tqdm(total=total, desc=desc, unit="img") as bar:
        for batch in _rebatch(source, batch_size):
            n = len(batch)
            if n < batch_size:  # pad, so the last batch reuses the compiled program
                pad = np.zeros((batch_size - n, *batch.shape[1:]), batch.dtype)
                batch = np.concatenate([batch, pad])
            result = _forward(graphdef, state, batch)
            if in_flight is not None:
                collect(*in_flight)
            in_flight = (result, n)
            bar.update(n)
        if in_flight is not None:
            collect(*in_flight)
    if not out["pool"]:
        raise ValueError("no images to compute features of")
    return {k: np.concatenate(v) for k, v in out.items()}


def _check_preprocess(reference: Reference, model: InceptionV3) -> None:
    if reference.preprocess is not None and reference.preprocess != model.preprocess:
        raise ValueError(
            f"{reference.path}: its statistics were made with preprocess="
            f"{reference.preprocess!r}, the Inception model uses {model.preprocess!r}; FIDs "
            "across preprocessing modes are not comparable. Load the model with "
            f"load_inception(..., preprocess={reference.preprocess!r}) or pass "
            "check_preprocess=False")


def metrics_from_features(sample: Mapping[str, np.ndarray], reference: Reference,
                          reference_pool: np.ndarray | None = None, *,
                          split_size: int = 5000,
                          k: int = metrics.NEIGHBOURS_K) -> dict[str, float]:
    """fid, sfid, inception_score, precision, recall from precomputed sample features and a
    reference with statistics. Precision/recall need the reference's pool features
    (`reference_pool`, else `reference.pool`); without them both are NaN."""
    if not reference.has_stats:
        raise ValueError(f"{reference.path}: no statistics; compute them from its images "
                         "first (evaluate() does)")
    mu, sigma = metrics.feature_stats(sample["pool"])
    mu_s, sigma_s = metrics.feature_stats(sample["spatial"])
    ref_pool = reference_pool if reference_pool is not None else reference.pool
    if ref_pool is not None:
        precision, recall = metrics.precision_recall(ref_pool, sample["pool"], k=k)
    else:
        precision = recall = float("nan")
    return {
        "fid": metrics.frechet_distance(mu, sigma, reference.mu, reference.sigma),
        "sfid": metrics.frechet_distance(mu_s, sigma_s, reference.mu_s, reference.sigma_s),
        "inception_score": metrics.inception_score(sample["logits"], split_size=split_size),
        "precision": precision,
        "recall": recall,
    }


def evaluate(sample_images: Images, reference: Reference | str | os.PathLike,
             inception_model: InceptionV3, *, batch_size: int = 200, split_size: int = 5000,
             k: int = metrics.NEIGHBOURS_K, check_preprocess: bool = True) -> dict[str, float]:
    """The ADM protocol: {'fid', 'sfid', 'inception_score', 'precision', 'recall'} of
    `sample_images` (see `compute_features` for the accepted forms) against `reference`
    (a `Reference` or the path of an ADM reference batch or of our stats file).

    As ADM's evaluator: the reference's stored statistics are used when present (else
    computed from its images); precision/recall compare against the reference's pool
    features, computed from its images (ADM batches) or stored in the file (`pool`); if it
    has neither, precision and recall are NaN.
    """
    ref = reference if isinstance(reference, Reference) else load_reference(reference)
    if check_preprocess:
        _check_preprocess(ref, inception_model)
    sample = compute_features(sample_images, inception_model, batch_size, desc="samples")
    ref_pool = ref.pool
    if ref.images_shape is not None and (ref_pool is None or not ref.has_stats):
        ref_feats = compute_features(ref.image_batches(batch_size), inception_model,
                                     batch_size, desc="reference")
        ref_pool = ref_feats["pool"]
        if not ref.has_stats:
            stats = _stats(ref_feats)
            ref = Reference(path=ref.path, images_shape=ref.images_shape,
                            preprocess=ref.preprocess, pool=ref.pool,
                            **{key: stats[key] for key in ("mu", "sigma", "mu_s", "sigma_s")})
    return metrics_from_features(sample, ref, ref_pool, split_size=split_size, k=k)


def _stats(features: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    mu, sigma = metrics.feature_stats(features["pool"])
    mu_s, sigma_s = metrics.feature_stats(features["spatial"])
    return {"mu": mu, "sigma": sigma, "mu_s": mu_s, "sigma_s": sigma_s}


def reference_statistics(images: Images, inception_model: InceptionV3, *,
                         batch_size: int = 200, num_pool: int | None = 10000,
                         seed: int = 0) -> dict[str, Any]:
    """Reference statistics of a dataset of ours, ready for `write_reference`: `mu`,
    `sigma`, `mu_s`, `sigma_s` over all images, `pool` features of `num_pool` of them
    (a uniform random subset without replacement, in dataset order; all if None or if there
    are fewer; ADM's reference batches hold 10k images for precision/recall), and the
    `preprocess` mode and `num_images` for the record."""
    feats = compute_features(images, inception_model, batch_size, desc="reference")
    n = len(feats["pool"])
    pool = feats["pool"]
    if num_pool is not None and n > num_pool:
        pool = pool[uniform_subset(n, num_pool, seed)]
    return {**_stats(feats), "pool": pool, "preprocess": inception_model.preprocess,
            "num_images": n}
