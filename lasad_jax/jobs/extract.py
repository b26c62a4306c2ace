"""`--mode=extract`: encodes the config's image dataset into token codes under
`config.data.codes_dir`, once and resumably, for every split in
`config.data.extract_splits` (the workdir is unused)."""

from __future__ import annotations

from absl import logging

from lasad_jax.config import GeneratorRun
from lasad_jax.data.extract import extract_split
from lasad_jax.tokenizers import build_tokenizer


def run(config: GeneratorRun, workdir: str | None = None) -> list[dict]:
    """Extracts each split; returns the manifests. One process only
    (`lasad_jax.jobs.ONE_PROCESS`: each would encode every image)."""
    tokenizer = build_tokenizer(config.tokenizer)
    manifests = []
    for split in config.data.extract_splits:
        manifest = extract_split(config.data, tokenizer, split)
        logging.info("extracted %s: %d images, %d skipped, into %s", split,
                     manifest["num_images"], manifest["num_skipped"], config.data.codes_dir)
        manifests.append(manifest)
    return manifests
