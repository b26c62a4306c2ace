"""`--mode=evaluate`: the ADM protocol on the newest checkpoint of the workdir.

Generates `eval.num_samples` images (sharded over the mesh like `--mode=sample`,
resumably: `lasad_jax.evaluation.sample_batch`), writes them as an ADM sample batch
(`workdir/eval/{eval.name}.npz`, `arr_0` uint8 NHWC plus `labels`) and scores them
against the reference: FID, sFID, Inception Score, precision and recall, saved to
`workdir/eval/{eval.name}.json`. With `eval.inception="random"` the numbers test the
pipeline and compare only with numbers from the same random network.
"""

from __future__ import annotations

import json
import os
from typing import Any

import jax
from absl import logging

from lasad_jax.config import GeneratorRun
from lasad_jax.evaluation.evaluator import evaluate
from lasad_jax.evaluation.reference import ADM_REFERENCE_URL, load_reference, reference_path
from lasad_jax.evaluation.sample_batch import (
    assemble,
    batch_settings,
    check_settings,
    generate_parts,
)
from lasad_jax.evaluation.weights import load_network
from lasad_jax.jobs.sample import restore_model
from lasad_jax.tokenizers import build_tokenizer


def run(config: GeneratorRun, workdir: str) -> dict[str, Any]:
    """Generates (or resumes) the sample batch of the newest checkpoint and scores it."""
    ev = config.eval
    # Everything that can fail cheaply fails before any image is generated.
    tokenizer = build_tokenizer(config.tokenizer)
    ref_path = reference_path(ev.reference, workdir)
    if not os.path.isfile(ref_path):
        raise FileNotFoundError(
            f"no reference statistics at {ref_path}: set config.eval.reference to ADM's "
            f"VIRTUAL_imagenet256_labeled.npz ({ADM_REFERENCE_URL}) or make statistics of "
            "the training images first with --mode=reference_stats and the same --workdir")
    reference = load_reference(ref_path)
    network, described = load_network(ev.inception, ev.preprocess)
    if reference.inception is not None and (
            reference.inception.startswith("random") != described.startswith("random")):
        raise ValueError(f"{reference.path} was made with Inception {reference.inception!r} "
                         f"but config.eval.inception gives {described!r}; make the reference "
                         "with the same network (--mode=reference_stats)")
    model, step, mesh = restore_model(config, workdir)

    out_dir = os.path.join(workdir, "eval")
    part_dir = os.path.join(out_dir, ev.name)
    os.makedirs(part_dir, exist_ok=True)
    settings = batch_settings(ev, config.sample, step=step, mixer=config.model.mixer)
    check_settings(part_dir, settings)
    generate_parts(model, tokenizer, ev, config.sample, num_classes=config.data.num_classes,
                   part_dir=part_dir, mesh=mesh)
    if jax.process_index() != 0:
        return {}
    samples = os.path.join(out_dir, f"{ev.name}.npz")
    assemble(part_dir, samples, ev.num_samples)
    metrics = evaluate(samples, reference, network, batch_size=ev.inception_batch_size)
    result = {**{k: float(v) for k, v in metrics.items()}, **settings,
              "reference": reference.path, "inception": described, "samples": samples}
    with open(os.path.join(out_dir, f"{ev.name}.json"), "w") as f:
        json.dump(result, f, indent=1)
    logging.info("| step | samples | cfg | FID | sFID | IS | precision | recall |")
    logging.info("| %d | %d | %.2f | %.2f | %.2f | %.2f | %.3f | %.3f |", step, ev.num_samples,
                 config.sample.cfg_scale, result["fid"], result["sfid"],
                 result["inception_score"], result["precision"], result["recall"])
    return result
