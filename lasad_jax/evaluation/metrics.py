"""The ADM-protocol metrics on Inception features: numpy/scipy, float64, no JAX.

Definitions follow openai/guided-diffusion `evaluations/evaluator.py` (the evaluator behind
the FID/sFID/IS/precision/recall numbers that LlamaGen, AiM and most ImageNet papers
report), which in turn follow TTUR's FID, improved-gan's Inception Score and Kynkaanniemi
et al.'s improved precision and recall. Everything here is float64, so results depend on
the features only, not on the order of summation of a float32 accelerator kernel.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator

import numpy as np
from scipy import linalg, special

# ADM's k of improved precision and recall: each feature's manifold radius is the distance
# to its k-th nearest neighbour, so a set needs at least k + 1 features.
NEIGHBOURS_K = 3


def feature_stats(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and (unbiased, N - 1) covariance of [N, D] features, as ADM's
    `compute_statistics` (`np.mean`, `np.cov(rowvar=False)`), in float64."""
    features = np.asarray(features, np.float64)
    if features.ndim != 2 or features.shape[0] < 2:
        raise ValueError(f"expected features [N >= 2, D], got shape {features.shape}")
    return features.mean(axis=0), np.cov(features, rowvar=False)


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray,
                     sigma2: np.ndarray, eps: float = 1e-6) -> float:
    """Frechet distance between N(mu1, sigma1) and N(mu2, sigma2):
    |mu1 - mu2|^2 + tr(sigma1 + sigma2 - 2 (sigma1 sigma2)^(1/2)).

    As TTUR and ADM: `scipy.linalg.sqrtm` of the product; if that is not finite (a nearly
    singular product), retry with `eps` added to both diagonals (and warn); a complex result
    is accepted when its diagonal's imaginary part is below 1e-3 (numerical noise) and its
    real part is used, else ValueError.
    """
    mu1 = np.atleast_1d(np.asarray(mu1, np.float64))
    mu2 = np.atleast_1d(np.asarray(mu2, np.float64))
    sigma1 = np.atleast_2d(np.asarray(sigma1, np.float64))
    sigma2 = np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or \
            sigma1.shape != (mu1.shape[0], mu1.shape[0]):
        raise ValueError(f"shapes do not match: mu1 {mu1.shape}, sigma1 {sigma1.shape}, "
                         f"mu2 {mu2.shape}, sigma2 {sigma2.shape}")
    diff = mu1 - mu2
    covmean = linalg.sqrtm(sigma1 @ sigma2)
    if not np.isfinite(covmean).all():
        warnings.warn(f"Frechet distance: singular product of covariances; adding {eps} to "
                      "their diagonals", stacklevel=2)
        offset = np.eye(sigma1.shape[0]) * eps
        covmean = linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            raise ValueError("Frechet distance: sqrtm has an imaginary component of "
                             f"{np.max(np.abs(covmean.imag)):.3g} (covariances not PSD?)")
        covmean = covmean.real
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * np.trace(covmean))


def inception_score(predictions: np.ndarray, *, from_logits: bool = True,
                    split_size: int = 5000) -> float:
    """Inception Score: mean over consecutive chunks of `split_size` predictions (the last
    may be shorter) of exp(E_x KL(p(y|x) || p(y))), with p(y) the chunk's mean prediction.

    ADM's definition: chunks of 5000 (so 10 for 50k samples), the mean of the chunk scores
    and no standard deviation. `predictions` are logits [N, C] (softmax taken here in
    float64; for the FID Inception pass its bias-free 1008-way `logits`) or, with
    `from_logits=False`, probabilities whose rows sum to 1 (zeros allowed: 0 log 0 = 0).
    """
    x = np.asarray(predictions, np.float64)
    if x.ndim != 2 or x.shape[0] == 0:
        raise ValueError(f"expected predictions [N >= 1, C], got shape {x.shape}")
    if split_size < 1:
        raise ValueError(f"split_size must be >= 1, got {split_size}")
    if from_logits:
        p = special.softmax(x, axis=1)
    else:
        if np.any(x < 0) or not np.allclose(x.sum(axis=1), 1.0, atol=1e-4):
            raise ValueError("probabilities must be non-negative with rows summing to 1 "
                             "(pass from_logits=True for logits)")
        p = x
    scores = []
    for start in range(0, len(p), split_size):
        part = p[start:start + split_size]
        # rel_entr(p, q) = p log(p / q), 0 where p = 0 (q > 0 wherever p > 0).
        kl = special.rel_entr(part, part.mean(axis=0, keepdims=True)).sum(axis=1)
        scores.append(np.exp(kl.mean()))
    return float(np.mean(scores))


def _row_blocks(n: int, block: int) -> Iterator[slice]:
    for start in range(0, n, block):
        yield slice(start, min(start + block, n))


def squared_distances(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Pairwise squared Euclidean distances [len(u), len(v)], clamped at 0 (ADM's form:
    |u|^2 - 2 u.v + |v|^2, which is one matmul)."""
    uu = np.einsum("ij,ij->i", u, u)[:, None]
    vv = np.einsum("ij,ij->i", v, v)[None, :]
    return np.maximum(uu - 2.0 * (u @ v.T) + vv, 0.0)


def manifold_radii(features: np.ndarray, k: int = NEIGHBOURS_K, block: int = 4096,
                   dtype: type = np.float64) -> np.ndarray:
    """Squared distance from each feature vector to its k-th nearest other vector.

    ADM takes the k-th entry (0-based) of each sorted row of distances that include the
    point itself (distance 0): the same value as the k-th nearest neighbour excluding self.
    Rows are processed in blocks of `block` against column blocks, keeping only the k + 1
    smallest distances per row, so memory is O(block^2), not O(N^2).
    """
    x = np.asarray(features, dtype)
    n = len(x)
    if not 1 <= k < n:
        raise ValueError(f"need 1 <= k < number of features, got k={k} for {n} features")
    radii = np.empty(n, np.float64)
    for rows in _row_blocks(n, block):
        best = np.full((rows.stop - rows.start, 0), np.inf)
        for cols in _row_blocks(n, block):
            both = np.concatenate([best, squared_distances(x[rows], x[cols])], axis=1)
            keep = min(k + 1, both.shape[1])
            best = np.partition(both, keep - 1, axis=1)[:, :keep]
        radii[rows] = np.partition(best, k, axis=1)[:, k]
    return radii


def precision_recall(real: np.ndarray, fake: np.ndarray, k: int = NEIGHBOURS_K, block: int = 4096,
                     dtype: type = np.float64) -> tuple[float, float]:
    """Improved precision and recall (Kynkaanniemi et al. 2019) as ADM computes them.

    Each set's manifold is the union of balls around its points with radius the distance to
    the point's k-th nearest neighbour in the same set (`manifold_radii`). Precision is the
    fraction of `fake` points inside the `real` manifold (some real r with
    |f - r| <= radius(r)); recall is the fraction of `real` points inside the `fake`
    manifold. Comparisons are on squared distances, as ADM's. Distances are computed block
    by block (`block` rows x `block` columns), never as one [N_real, N_fake] matrix.
    """
    real, fake = np.asarray(real, dtype), np.asarray(fake, dtype)
    if real.ndim != 2 or fake.ndim != 2 or real.shape[1] != fake.shape[1]:
        raise ValueError(f"expected [N, D] features with equal D, got {real.shape} and "
                         f"{fake.shape}")
    r_real, r_fake = manifold_radii(real, k, block, dtype), manifold_radii(fake, k, block, dtype)
    fake_in = np.zeros(len(fake), bool)
    real_in = np.zeros(len(real), bool)
    for rows in _row_blocks(len(real), block):
        for cols in _row_blocks(len(fake), block):
            d = squared_distances(real[rows], fake[cols])
            fake_in[cols] |= np.any(d <= r_real[rows, None], axis=0)
            real_in[rows] |= np.any(d <= r_fake[None, cols], axis=1)
    return float(fake_in.mean()), float(real_in.mean())
