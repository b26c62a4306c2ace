"""`--mode=evaluate`: the ADM protocol on the newest checkpoint of the workdir.

Generates `eval.num_samples` images (sharded over the mesh like `--mode=sample`,
resumably: `lasad_jax.evaluation.sample_batch`), writes them as an ADM sample batch
(`workdir/eval/{eval.name}.npz`, `arr_0` uint8 NHWC plus `labels`; resized to
`eval.image_size` when that is set) and scores them against the reference: FID, sFID,
Inception Score, precision and recall, saved to `workdir/eval/{eval.name}.json`. With
`eval.inception="random"` the numbers test the pipeline and compare only with numbers
from the same random network.

The parts and the results record what made them (checkpoint step, the weights'
fingerprint, tokenizer fingerprint, sampling settings, model numerics, reference
path and content, network and its preprocessing): another evaluation under the same `eval.name` is
refused, naming what differs, and the same one again writes nothing.

A `gs://` workdir (or reference) works as a local one: the reference is read from a
local copy (`files.local_file`), the parts and results through `lasad_jax.files`, and
the batch is assembled and scored on local disk, then uploaded.
"""

from __future__ import annotations

import json
import os
from typing import Any

import jax
from absl import logging

from lasad_jax import files
from lasad_jax.config import GeneratorRun
from lasad_jax.evaluation.evaluator import evaluate
from lasad_jax.evaluation.reference import (
    ADM_REFERENCE_URL,
    Reference,
    load_reference,
    reference_path,
)
from lasad_jax.evaluation.sample_batch import (
    assemble,
    batch_settings,
    check_settings,
    generate_parts,
    matches,
    record_settings,
    settings_differences,
    staging_path,
    with_implied,
)
from lasad_jax.evaluation.resize import scored_size
from lasad_jax.evaluation.weights import describe_network, load_network, network_digest
from lasad_jax.files import require_writable, save_json
from lasad_jax.jobs.sample import restore_model
from lasad_jax.sampling.sampler import weights_fingerprint
from lasad_jax.tokenizers import Tokenizer, build_tokenizer
from lasad_jax.tokenizers.base import short


def run(config: GeneratorRun, workdir: str) -> dict[str, Any]:
    """Generates (or resumes) the sample batch of the newest checkpoint and scores it."""
    ev = config.eval
    # Everything that can fail cheaply fails before any image is generated.
    tokenizer = build_tokenizer(config.tokenizer)
    ref_path = reference_path(ev.reference, workdir)
    if not files.exists(ref_path) or files.isdir(ref_path):
        raise FileNotFoundError(
            f"no reference statistics at {ref_path}: set config.eval.reference to ADM's "
            f"VIRTUAL_imagenet256_labeled.npz ({ADM_REFERENCE_URL}) or make statistics of "
            "the training images first with --mode=reference_stats and the same --workdir")
    reference = load_reference(files.local_file(ref_path, "config.eval.reference"))
    described, digest = describe_network(ev.inception), network_digest(ev.inception)
    made_digest = (reference.settings or {}).get("inception_digest")
    if reference.inception is not None and (
            reference.inception.startswith("random") != described.startswith("random")):
        raise ValueError(f"{ref_path} was made with Inception {reference.inception!r} "
                         f"but config.eval.inception gives {described!r}; make the reference "
                         "with the same network (--mode=reference_stats)")
    if made_digest is not None and digest is not None and made_digest != digest:
        raise ValueError(f"{ref_path} was made with other Inception weights "
                         f"({reference.inception}, {short(made_digest)}) than "
                         f"config.eval.inception={ev.inception!r} ({short(digest)}); point "
                         "it at the weights the reference was made with, or make the "
                         "reference again with these (--mode=reference_stats)")
    _check_reference(reference, ref_path, config, tokenizer)
    model, step, mesh = restore_model(config, workdir, tokenizer)

    out_dir = os.path.join(workdir, "eval")
    part_dir = os.path.join(out_dir, ev.name)
    samples = os.path.join(out_dir, f"{ev.name}.npz")
    results = os.path.join(out_dir, f"{ev.name}.json")
    weights = weights_fingerprint(model)  # one pass over the weights, for both records
    settings = batch_settings(ev, config.sample, step=step, mixer=config.model.mixer,
                              tokenizer=tokenizer.fingerprint, model_cfg=config.model,
                              weights=weights)
    # What turns the batch into scores: a record without `preprocess` (made before it was
    # recorded) no longer matches, so its scores are not passed off as this evaluation's.
    # The reference's content counts, not only its path: statistics made again, or another
    # file copied over the old one, give other scores.
    scored = {**settings, "reference": ref_path, "reference_digest": reference.digest,
              "inception": described, "inception_digest": digest, "preprocess": ev.preprocess}
    if files.exists(results):
        old = with_implied(json.loads(files.read_bytes(results)))
        if not matches(old, scored):
            raise ValueError(f"{results} holds the scores of another evaluation "
                             f"({settings_differences(old, scored)}); set another "
                             "config.eval.name, or move it away")
        if files.exists(samples):  # the same evaluation, done: nothing is written
            logging.info("%s holds this evaluation already", results)
            _log_table(old, step, ev.num_samples, config.sample.cfg_scale)
            return old
    check_settings(part_dir, settings)
    network, _ = load_network(ev.inception, ev.preprocess)
    require_writable(part_dir)
    record_settings(part_dir, settings)
    generate_parts(model, tokenizer, ev, config.sample, num_classes=config.data.num_classes,
                   part_dir=part_dir, mesh=mesh, weights=weights)
    if jax.process_index() != 0:
        return {}
    # A remote batch is assembled and scored locally (the scorer reads zip members by
    # path), then uploaded.
    local = staging_path(samples) if files.is_remote(samples) else samples
    try:
        if local != samples:
            os.makedirs(os.path.dirname(local), exist_ok=True)
        assemble(part_dir, local, ev.num_samples)
        metrics = evaluate(local, reference, network, batch_size=ev.inception_batch_size)
        if local != samples:
            files.upload_file(local, samples)
    finally:
        if local != samples and os.path.exists(local):
            os.remove(local)
    result = {**{k: float(v) for k, v in metrics.items()}, **scored, "samples": samples}
    save_json(results, result)
    _log_table(result, step, ev.num_samples, config.sample.cfg_scale)
    return result


def _check_reference(reference: Reference, ref_path: str, config: GeneratorRun,
                     tokenizer: Tokenizer) -> None:
    """Samples must be scored as the reference was (the same Inception preprocessing) and
    compared with images of the same size and grey levels. An ADM
    batch shows its size in `arr_0`; statistics made by `--mode=reference_stats` record
    theirs and, for the embedded datasets (whose images pass through the tokenizer), the
    tokenizer. The size compared is the one samples are scored at (`eval.image_size`,
    else the tokenizer's). Files of bare statistics say nothing and pass. The messages
    name `ref_path`, the file as configured (a remote one is read from a local copy)."""
    made = reference.settings or {}
    made_with = reference.preprocess or made.get("preprocess")  # "adm" for ADM's batches
    if made_with not in (None, config.eval.preprocess):
        raise ValueError(f"{ref_path} holds statistics made with Inception preprocessing "
                         f"{made_with!r}, but config.eval.preprocess is "
                         f"{config.eval.preprocess!r}; set config.eval.preprocess="
                         f"{made_with}, or use a reference made with "
                         f"{config.eval.preprocess!r} (--mode=reference_stats)")
    size = list(scored_size(config.eval.image_size, tuple(tokenizer.image_shape[:2])))
    scored = f"the samples are {size} (" + (
        "config.eval.image_size)" if config.eval.image_size
        else "the tokenizer's size; config.eval.image_size=0)")
    if reference.images_shape is not None and list(reference.images_shape[1:3]) != size:
        held = list(reference.images_shape[1:3])
        raise ValueError(f"{ref_path} holds {held} images, but {scored}; set "
                         f"config.eval.image_size={held[0]} to resize the samples to its "
                         "size (bicubic, as LlamaGen scores 384 px models), or use "
                         "another reference")
    if made.get("image_size") not in (None, size):
        raise ValueError(f"{ref_path} holds statistics of {made['image_size']} images, "
                         f"but {scored}; make the reference again "
                         "(--mode=reference_stats) with the same config.eval.image_size, "
                         "or set config.eval.reference")
    if made.get("tokenizer") not in (None, tokenizer.fingerprint):
        raise ValueError(f"{ref_path} was made with tokenizer {short(made['tokenizer'])}"
                         f", but this run decodes with {short(tokenizer.fingerprint)} "
                         f"({tokenizer.describe()}); make the reference again "
                         "(--mode=reference_stats, after moving the old file away)")


def _log_table(result: dict[str, Any], step: int, num_samples: int, cfg_scale: float) -> None:
    logging.info("| step | samples | cfg | FID | sFID | IS | precision | recall |")
    logging.info("| %d | %d | %.2f | %.2f | %.2f | %.2f | %.3f | %.3f |", step, num_samples,
                 cfg_scale, result["fid"], result["sfid"], result["inception_score"],
                 result["precision"], result["recall"])
