"""ADM-protocol evaluation: the FID Inception network and FID / sFID / IS / precision-recall.

    from lasad_jax.evaluation import evaluate
    from lasad_jax.evaluation.weights import load_inception
    model = load_inception("inception_fid.npz")          # converted pytorch-fid weights
    evaluate("samples.npz", "VIRTUAL_imagenet256_labeled.npz", model)

`metrics` is numpy/scipy only; `inception` is the Flax NNX network; `reference` reads and
writes reference files; `evaluator` ties them together; `resize` is LlamaGen's bicubic
resize of samples to the reference's size (`eval.image_size`).
"""

from lasad_jax.evaluation.evaluator import (
    compute_features,
    evaluate,
    metrics_from_features,
    reference_statistics,
)
from lasad_jax.evaluation.inception import (
    INPUT_SIZE,
    NUM_LOGITS,
    POOL_DIM,
    PREPROCESS_MODES,
    SPATIAL_DIM,
    InceptionV3,
    inception_from_arrays,
    preprocess,
    random_inception,
)
from lasad_jax.evaluation.metrics import (
    feature_stats,
    frechet_distance,
    inception_score,
    manifold_radii,
    precision_recall,
)
from lasad_jax.evaluation.reference import (
    ADM_REFERENCE_URL,
    Reference,
    iter_npz_batches,
    load_reference,
    write_reference,
)
from lasad_jax.evaluation.resize import resize_bicubic

__all__ = [
    "ADM_REFERENCE_URL", "INPUT_SIZE", "NUM_LOGITS", "POOL_DIM", "PREPROCESS_MODES",
    "SPATIAL_DIM", "InceptionV3", "Reference", "compute_features", "evaluate",
    "feature_stats", "frechet_distance", "inception_from_arrays", "inception_score",
    "iter_npz_batches", "load_reference", "manifold_radii", "metrics_from_features",
    "precision_recall", "preprocess", "random_inception", "reference_statistics",
    "resize_bicubic", "write_reference",
]
