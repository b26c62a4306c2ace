"""`--mode=reference_stats`: the Inception statistics of the real images of
`eval.reference_split`, written to `eval.reference` (or `workdir/reference_stats.npz`),
which `--mode=evaluate` then scores samples against.

The file records what made it (`reference_settings`: dataset, split, limit and subset
rule, image size, the tokenizer's fingerprint where the images pass through it, the
network). The same
command again finds it made and writes nothing; other settings are refused rather than
written over it.
"""

from __future__ import annotations

from typing import Any

from absl import logging

from lasad_jax.config import GeneratorRun
from lasad_jax.data.config import EMBEDDED
from lasad_jax.evaluation.evaluator import reference_statistics
from lasad_jax.evaluation.real_images import SUBSET_SEED, dataset_images
from lasad_jax.evaluation.reference import load_reference, reference_path, write_reference
from lasad_jax.evaluation.resize import scored_size
from lasad_jax.evaluation.sample_batch import matches, settings_differences
from lasad_jax.evaluation.weights import describe_network, load_network, network_digest
from lasad_jax import files
from lasad_jax.files import require_writable
from lasad_jax.tokenizers import Tokenizer, build_tokenizer

# The data fields that decide which images a reference holds.
DATA_FIELDS = ("name", "seed", "val_fraction", "size", "num_train", "num_val", "image_source",
               "image_dir", "tfds_data_dir")


def reference_settings(config: GeneratorRun, tokenizer: Tokenizer | None) -> dict[str, Any]:
    """What makes a reference: its images (dataset, split, limit and how the subset is
    drawn, scored size; the embedded datasets' images are decoded through the tokenizer,
    so its fingerprint too) and the network that saw them.

    `subset` is recorded only with a limit: files made before it existed took the first
    `limit` images, so they now differ from these settings and are refused rather than
    reused; without a limit both rules take every image, and such files still match."""
    ev = config.eval
    settings = {"data": {name: getattr(config.data, name) for name in DATA_FIELDS},
                "split": ev.reference_split, "limit": ev.reference_limit,
                "image_size": list(scored_size(ev.image_size,
                                               tuple(config.tokenizer.image_size))),
                "tokenizer": tokenizer.fingerprint if tokenizer is not None else None,
                "inception": describe_network(ev.inception),
                "inception_digest": network_digest(ev.inception), "preprocess": ev.preprocess}
    if ev.reference_limit:
        settings["subset"] = f"uniform random, seed {SUBSET_SEED}"
    return settings


def run(config: GeneratorRun, workdir: str) -> str:
    """Writes the reference statistics (unless the same ones are there); returns their
    path."""
    ev = config.eval
    path = reference_path(ev.reference, workdir)
    tokenizer = build_tokenizer(config.tokenizer) if config.data.name in EMBEDDED else None
    settings = reference_settings(config, tokenizer)
    if files.exists(path):  # a remote one is read from a local copy
        existing = load_reference(files.local_file(path, "config.eval.reference")).settings
        existing = existing or {}
        # Files made before a field was recorded are compared without it.
        if matches(existing, settings):
            logging.info("%s holds these reference statistics already: nothing to do", path)
            return path
        raise ValueError(f"{path} holds other reference statistics ("
                         f"{settings_differences(existing, settings) or 'made elsewhere'}); "
                         "set config.eval.reference to another file, or move it away")
    require_writable(files.parent(path))
    network, described = load_network(ev.inception, ev.preprocess)
    images = dataset_images(config.data, config.tokenizer, ev.reference_split,
                            ev.reference_limit, built=tokenizer, image_size=ev.image_size)
    stats = reference_statistics(images, network, batch_size=ev.inception_batch_size)
    stats.update(inception=described, settings=settings)
    write_reference(path, stats)
    logging.info("reference statistics of %d %s images (Inception: %s) written to %s",
                 stats["num_images"], ev.reference_split, described, path)
    return path
