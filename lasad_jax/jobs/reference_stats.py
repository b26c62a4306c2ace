"""`--mode=reference_stats`: the Inception statistics of the real images of
`eval.reference_split`, written to `eval.reference` (or `workdir/reference_stats.npz`),
which `--mode=evaluate` then scores samples against."""

from __future__ import annotations

import os

from absl import logging

from lasad_jax.config import GeneratorRun
from lasad_jax.evaluation.evaluator import reference_statistics
from lasad_jax.evaluation.real_images import dataset_images
from lasad_jax.evaluation.reference import reference_path, write_reference
from lasad_jax.evaluation.weights import load_network


def run(config: GeneratorRun, workdir: str) -> str:
    """Writes the reference statistics; returns their path."""
    ev = config.eval
    network, described = load_network(ev.inception, ev.preprocess)
    path = reference_path(ev.reference, workdir)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    images = dataset_images(config.data, config.tokenizer, ev.reference_split,
                            ev.reference_limit)
    stats = reference_statistics(images, network, batch_size=ev.inception_batch_size)
    stats["inception"] = described
    write_reference(path, stats)
    logging.info("reference statistics of %d %s images (Inception: %s) written to %s",
                 stats["num_images"], ev.reference_split, described, path)
    return path
