"""The ADM metrics against independent computations, and reference files.

Independent means a different algorithm written here: the trace of the matrix square root
from eigenvalues (not sqrtm), precision/recall from full Euclidean distance matrices with
self excluded by index (not blocked squared distances with self included), the Inception
Score chunk by chunk with scipy's softmax.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import special

from lasad_jax.evaluation import metrics
from lasad_jax.evaluation.inception import POOL_DIM, SPATIAL_DIM
from lasad_jax.evaluation.reference import (
    ADM_REFERENCE_URL,
    content_digest,
    iter_npz_batches,
    load_reference,
    write_reference,
)


def _fd_by_eigenvalues(mu1, s1, mu2, s2) -> float:
    # s1 s2 is similar to s1^(1/2) s2 s1^(1/2) (PSD), so tr sqrt(s1 s2) = sum sqrt(eig).
    w, v = np.linalg.eigh(s1)
    root = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    eig = np.linalg.eigvalsh(root @ s2 @ root)
    diff = mu1 - mu2
    root_trace = np.sqrt(np.clip(eig, 0, None)).sum()
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2 * root_trace)


def test_frechet_distance_matches_eigenvalue_formula():
    rng = np.random.default_rng(0)
    a = rng.standard_normal((400, 12)) @ rng.standard_normal((12, 12))
    b = 0.5 + rng.standard_normal((300, 12)) @ rng.standard_normal((12, 12))
    mu1, s1 = metrics.feature_stats(a)
    mu2, s2 = metrics.feature_stats(b)
    np.testing.assert_allclose(mu1, a.mean(0))
    np.testing.assert_allclose(s1, (a - a.mean(0)).T @ (a - a.mean(0)) / (len(a) - 1))
    got = metrics.frechet_distance(mu1, s1, mu2, s2)
    want = _fd_by_eigenvalues(mu1, s1, mu2, s2)
    assert want > 1.0
    assert got == pytest.approx(want, rel=1e-9)
    assert metrics.frechet_distance(mu2, s2, mu1, s1) == pytest.approx(want, rel=1e-9)


def test_frechet_distance_diagonal_closed_form():
    rng = np.random.default_rng(1)
    a, b = rng.uniform(0.1, 3, 8), rng.uniform(0.1, 3, 8)
    mu1, mu2 = rng.standard_normal(8), rng.standard_normal(8)
    want = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    assert metrics.frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(want,
                                                                                      rel=1e-12)


def test_fid_of_a_set_against_itself_is_zero():
    x = np.random.default_rng(2).standard_normal((600, 32)) * np.linspace(0.5, 3, 32)
    mu, sigma = metrics.feature_stats(x)
    assert abs(metrics.frechet_distance(mu, sigma, mu, sigma)) < 1e-6 * np.trace(sigma)


def test_frechet_distance_singular_product_retries_with_offset(monkeypatch):
    rng = np.random.default_rng(3)
    mu1, mu2 = rng.standard_normal(6), rng.standard_normal(6)
    s1 = np.cov(rng.standard_normal((50, 6)), rowvar=False)
    s2 = np.cov(rng.standard_normal((50, 6)), rowvar=False)
    real_sqrtm, calls = metrics.linalg.sqrtm, []

    def sqrtm(m):
        calls.append(m)
        return np.full_like(m, np.inf) if len(calls) == 1 else real_sqrtm(m)

    monkeypatch.setattr(metrics.linalg, "sqrtm", sqrtm)
    with pytest.warns(UserWarning, match="singular product"):
        got = metrics.frechet_distance(mu1, s1, mu2, s2, eps=1e-3)
    off = 1e-3 * np.eye(6)
    np.testing.assert_allclose(calls[1], (s1 + off) @ (s2 + off))
    # The offset enters only the square root term, as in TTUR/ADM.
    diff = mu1 - mu2
    want = diff @ diff + np.trace(s1) + np.trace(s2) - 2 * np.trace(real_sqrtm(calls[1]).real)
    assert got == pytest.approx(want, rel=1e-12)


def test_frechet_distance_imaginary_parts(monkeypatch):
    s = np.eye(3)
    monkeypatch.setattr(metrics.linalg, "sqrtm", lambda m: m + 1e-5j)  # noise: accepted
    assert metrics.frechet_distance(np.zeros(3), s, np.zeros(3), s) == pytest.approx(0, abs=1e-9)
    monkeypatch.setattr(metrics.linalg, "sqrtm", lambda m: m + 0.5j)  # not noise: refused
    with pytest.raises(ValueError, match="imaginary component"):
        metrics.frechet_distance(np.zeros(3), s, np.zeros(3), s)
    with pytest.raises(ValueError, match="shapes do not match"):
        metrics.frechet_distance(np.zeros(3), s, np.zeros(4), np.eye(4))


def test_inception_score_known_values():
    assert metrics.inception_score(np.zeros((50, 10))) == pytest.approx(1.0, abs=1e-12)
    k = 4
    onehot = np.eye(k)[np.arange(20) % k]
    assert metrics.inception_score(onehot, from_logits=False) == pytest.approx(k, rel=1e-12)
    assert metrics.inception_score(60.0 * onehot) == pytest.approx(k, rel=1e-9)
    # One class only: p(y|x) = p(y), no information, score 1.
    assert metrics.inception_score(np.eye(k)[[2] * 9], from_logits=False) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="rows summing to 1"):
        metrics.inception_score(onehot * 2, from_logits=False)


def test_inception_score_chunks_like_adm():
    logits = np.random.default_rng(4).standard_normal((23, 7)) * 3
    scores = []
    for part in (logits[:10], logits[10:20], logits[20:]):  # chunks of 10: 10, 10, 3
        p = special.softmax(part, axis=1)
        kl = np.sum(p * (np.log(p) - np.log(p.mean(0, keepdims=True))), axis=1)
        scores.append(np.exp(kl.mean()))
    assert metrics.inception_score(logits, split_size=10) == pytest.approx(np.mean(scores),
                                                                           rel=1e-12)
    assert metrics.inception_score(logits, split_size=10) != pytest.approx(
        metrics.inception_score(logits, split_size=23), rel=1e-6)


def _brute_force_pr(real, fake, k):
    def radii(x):
        d = np.linalg.norm(x[:, None] - x[None], axis=-1)
        return np.array([np.sort(np.delete(d[i], i))[k - 1] for i in range(len(x))])

    d = np.linalg.norm(real[:, None] - fake[None], axis=-1)  # [real, fake]
    r_real, r_fake = radii(real), radii(fake)
    precision = np.mean([np.any(d[:, j] <= r_real) for j in range(len(fake))])
    recall = np.mean([np.any(d[i, :] <= r_fake) for i in range(len(real))])
    return precision, recall, r_real


@pytest.mark.parametrize("k", [1, 3])
def test_precision_recall_matches_brute_force(k):
    rng = np.random.default_rng(5 + k)
    real = rng.standard_normal((41, 5))
    fake = rng.standard_normal((33, 5)) + 1.0
    precision, recall, r_real = _brute_force_pr(real, fake, k)
    assert 0.05 < precision < 0.95 and 0.05 < recall < 0.95  # a case that can fail
    np.testing.assert_allclose(np.sqrt(metrics.manifold_radii(real, k, block=8)), r_real,
                               rtol=1e-10)
    got = metrics.precision_recall(real, fake, k=k, block=8)  # blocks of 8 rows/columns
    assert got == (pytest.approx(precision, abs=1e-15), pytest.approx(recall, abs=1e-15))
    assert metrics.precision_recall(real, fake, k=k) == got  # one block


def test_precision_recall_known_cases():
    x = np.random.default_rng(7).standard_normal((30, 4))
    assert metrics.precision_recall(x, x.copy(), block=7) == (1.0, 1.0)
    assert metrics.precision_recall(x, x + 100.0) == (0.0, 0.0)
    with pytest.raises(ValueError, match="k < number"):
        metrics.precision_recall(x[:3], x[:3], k=3)


# -------------------------------------------------------------------------- reference files

def _stats(rng, pool_rows: int | None = 6) -> dict:
    out = {"mu": rng.standard_normal(POOL_DIM), "sigma": np.eye(POOL_DIM, dtype=np.float32),
           "mu_s": rng.uniform(0, 1, SPATIAL_DIM), "sigma_s": np.eye(SPATIAL_DIM, dtype=np.float32)}
    if pool_rows:
        out["pool"] = rng.standard_normal((pool_rows, POOL_DIM)).astype(np.float32)
    return out


def test_reference_round_trip(tmp_path):
    stats = {**_stats(np.random.default_rng(8)), "preprocess": "adm", "num_images": 1234}
    path = tmp_path / "ref_stats"  # no suffix: written to exactly this name
    write_reference(path, stats)
    ref = load_reference(path)
    for key in ("mu", "sigma", "mu_s", "sigma_s", "pool"):
        np.testing.assert_array_equal(getattr(ref, key), stats[key])
    assert ref.has_stats and ref.images_shape is None and ref.preprocess == "adm"
    with pytest.raises(ValueError, match="statistics only"):
        ref.image_batches(2)


def test_the_content_digest_follows_the_arrays_not_the_file(tmp_path):
    """Results record the reference's digest: it must change with any element, and stay
    the same for the same arrays written again, elsewhere, later or compressed."""
    rng = np.random.default_rng(3)
    stats, images = _stats(rng), rng.integers(0, 256, (4, 8, 8, 3), dtype=np.uint8)
    np.savez(tmp_path / "a.npz", arr_0=images, **stats)
    digest = load_reference(tmp_path / "a.npz").digest
    assert digest == content_digest(tmp_path / "a.npz") and digest.startswith("sha256:")
    np.savez_compressed(tmp_path / "b.npz", arr_0=images, **stats)
    assert content_digest(tmp_path / "b.npz") == digest
    changed = images.copy()
    changed[3, 7, 7, 2] ^= 1  # one bit of the last image
    np.savez(tmp_path / "c.npz", arr_0=changed, **stats)
    assert content_digest(tmp_path / "c.npz") != digest
    np.savez(tmp_path / "d.npz", arr_0=images, **{**stats, "mu": stats["mu"] + 1e-12})
    assert content_digest(tmp_path / "d.npz") != digest


def test_adm_reference_batch_and_streaming(tmp_path):
    rng = np.random.default_rng(9)
    images = rng.integers(0, 256, (5, 8, 8, 3), dtype=np.uint8)
    path = tmp_path / "VIRTUAL_tiny.npz"
    np.savez(path, arr_0=images, **_stats(rng, pool_rows=None))
    ref = load_reference(path)
    assert ref.has_stats and ref.pool is None and ref.preprocess == "adm"
    assert ref.images_shape == (5, 8, 8, 3)
    batches = list(ref.image_batches(2))
    assert [len(b) for b in batches] == [2, 2, 1]
    np.testing.assert_array_equal(np.concatenate(batches), images)
    compressed = tmp_path / "samples.npz"  # a compressed member streams too
    np.savez_compressed(compressed, arr_0=images)
    np.testing.assert_array_equal(np.concatenate(list(iter_npz_batches(compressed, 3))), images)
    only_images = load_reference(compressed)
    assert not only_images.has_stats and only_images.images_shape == (5, 8, 8, 3)
    assert only_images.preprocess is None  # no statistics, so no mode to agree with


def test_reference_errors_name_file_and_keys(tmp_path):
    missing = tmp_path / "nope.npz"
    with pytest.raises(FileNotFoundError, match="nope.npz") as err:
        load_reference(missing)
    assert ADM_REFERENCE_URL in str(err.value)
    partial = tmp_path / "partial.npz"
    stats = _stats(np.random.default_rng(10), pool_rows=None)
    np.savez(partial, mu=stats["mu"], sigma=stats["sigma"])
    with pytest.raises(ValueError, match=r"(?s)partial.npz.*lacks \['mu_s', 'sigma_s'\]"):
        load_reference(partial)
    empty = tmp_path / "other.npz"
    np.savez(empty, labels=np.arange(3))
    with pytest.raises(ValueError, match=r"other.npz: missing keys \['mu', 'sigma', 'mu_s'"):
        load_reference(empty)
    wrong = tmp_path / "wrong.npz"
    np.savez(wrong, **{**stats, "mu": np.zeros(100)})
    with pytest.raises(ValueError,
                       match=r"(?s)wrong.npz.*mu: expected shape \(2048,\), got \(100,\)"):
        load_reference(wrong)
    text = tmp_path / "text.npz"
    text.write_text("not an npz")
    with pytest.raises(ValueError, match="text.npz"):
        load_reference(text)
    with pytest.raises(ValueError, match=r"lack \['sigma_s'\]"):
        write_reference(tmp_path / "x.npz", {k: v for k, v in stats.items() if k != "sigma_s"})
    negative = tmp_path / "pre_relu.npz"
    np.savez(negative, **{**stats, "mu_s": stats["mu_s"] - 1.0})
    with pytest.warns(UserWarning, match="post-ReLU"):
        load_reference(negative)
