"""The FID InceptionV3 in NNX with random weights: outputs, preprocessing, feature batching
and the evaluate() wiring.

One jitted program (evaluation.evaluator._forward, batch 2 of 32x32 uint8) serves most tests,
so the module compiles the network only a few times.
"""

from __future__ import annotations

import jax
import numpy as np
import pytest
from flax import nnx

from lasad_jax.evaluation import evaluator, metrics
from lasad_jax.evaluation.inception import (
    NUM_LOGITS,
    POOL_DIM,
    SPATIAL_DIM,
    avg_pool_exclude_pad,
    max_pool,
    preprocess,
    random_inception,
)
from lasad_jax.evaluation.reference import load_reference, write_reference


@pytest.fixture(scope="module")
def model():
    return random_inception(seed=0)


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(0).integers(0, 256, (5, 32, 32, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def forward(model):
    graphdef, state = nnx.split(model)
    return lambda x: jax.tree.map(np.asarray, evaluator._forward(graphdef, state, x))


@pytest.fixture(scope="module")
def out(forward, images):
    return forward(images[:2])


def test_outputs_shapes_finite_and_deterministic(forward, images, out):
    assert {k: v.shape for k, v in out.items()} == {
        "pool": (2, POOL_DIM), "spatial": (2, SPATIAL_DIM), "logits": (2, NUM_LOGITS)}
    assert SPATIAL_DIM == 17 * 17 * 7
    for v in out.values():
        assert v.dtype == np.float32 and np.all(np.isfinite(v)) and np.std(v) > 1e-3
    assert np.all(out["pool"] >= 0) and np.all(out["spatial"] >= 0)  # both follow a ReLU
    again = forward(images[:2])
    for k in out:
        np.testing.assert_array_equal(again[k], out[k])
    assert not np.allclose(out["pool"][0], out["pool"][1])


def test_uint8_and_float_inputs_agree(forward, images, out):
    # Two programs (uint8 and float32 inputs), so equal up to rounding: bit for bit only
    # where the compiler happens to fuse the same multiplies and adds in both.
    as_float = forward(images[:2].astype(np.float32))
    for k in out:
        np.testing.assert_allclose(as_float[k], out[k], rtol=1e-4,
                                   atol=1e-5 * float(np.abs(out[k]).max()))


def test_features_are_the_documented_layers(model, images, out):
    graphdef, state = nnx.split(model)

    @jax.jit
    def probe(state, x):
        m = nnx.merge(graphdef, state)
        h = m.trunk_to_mixed_6c(preprocess(x, "adm"))
        branch1x1 = m.Mixed_6d.branch1x1(h)  # TF mixed_6/conv
        for block in (m.Mixed_6d, m.Mixed_6e, m.Mixed_7a, m.Mixed_7b, m.Mixed_7c):
            h = block(h)
        return branch1x1, h

    branch1x1, last = map(np.asarray, probe(state, images[:2]))
    assert branch1x1.shape == (2, 17, 17, 192) and last.shape == (2, 8, 8, 2048)
    # First 7 channels, flattened row-major over (h, w, c) as ADM's NHWC reshape.
    want = branch1x1[..., :7].reshape(2, -1)
    assert want[0, 7 * 18 + 3] == branch1x1[0, 1, 1, 3]
    np.testing.assert_allclose(out["spatial"], want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(out["pool"], last.mean(axis=(1, 2)), rtol=1e-5, atol=1e-5)
    kernel, bias = np.asarray(model.fc.kernel[...]), np.asarray(model.fc.bias[...])
    unbiased = out["pool"].astype(np.float64) @ kernel
    np.testing.assert_allclose(out["logits"], unbiased, rtol=1e-4, atol=1e-4)
    assert np.abs(out["logits"] - (unbiased + bias)).max() > 0.05  # the bias is left out


def _tf1_resize_loop(img: np.ndarray, size: int) -> np.ndarray:
    """TF1 resize_bilinear(align_corners=False), legacy: source = i * in / out."""
    h, w, _ = img.shape
    res = np.empty((size, size, img.shape[2]))
    for i in range(size):
        for j in range(size):
            sy, sx = i * h / size, j * w / size
            y0, x0 = int(np.floor(sy)), int(np.floor(sx))
            y1, x1 = min(y0 + 1, h - 1), min(x0 + 1, w - 1)
            dy, dx = sy - y0, sx - x0
            top = (1 - dx) * img[y0, x0] + dx * img[y0, x1]
            bottom = (1 - dx) * img[y1, x0] + dx * img[y1, x1]
            res[i, j] = (1 - dy) * top + dy * bottom
    return res


def _half_pixel_resize(img: np.ndarray, size: int) -> np.ndarray:
    """Bilinear with half-pixel centres (torch align_corners=False): source
    max((i + 0.5) * in / out - 0.5, 0), neighbours clamped to the edge."""
    def taps(n_in):
        src = np.maximum((np.arange(size) + 0.5) * n_in / size - 0.5, 0)
        lo = np.floor(src).astype(int)
        return lo, np.minimum(lo + 1, n_in - 1), src - lo

    (y0, y1, dy), (x0, x1, dx) = taps(img.shape[0]), taps(img.shape[1])
    rows = img[y0] * (1 - dy)[:, None, None] + img[y1] * dy[:, None, None]
    return rows[:, x0] * (1 - dx)[None, :, None] + rows[:, x1] * dx[None, :, None]


def test_adm_preprocess_is_tf1_legacy_resize_and_128_scaling():
    rng = np.random.default_rng(1)
    tiny = rng.integers(0, 256, (2, 5, 7, 3), dtype=np.uint8)
    got = np.asarray(preprocess(tiny, "adm", size=9))
    for b in range(2):
        want = (_tf1_resize_loop(tiny[b].astype(np.float64), 9) - 128) / 128
        np.testing.assert_allclose(got[b], want, atol=2e-6)
    # Legacy sampling is top-left aligned: output (0, 0) is input (0, 0) exactly.
    np.testing.assert_array_equal(got[:, 0, 0], (tiny[:, 0, 0] - 128.0) / 128)
    img = rng.integers(0, 256, (1, 32, 32, 3), dtype=np.uint8)
    got = np.asarray(preprocess(img, "adm"))
    assert got.shape == (1, 299, 299, 3)
    np.testing.assert_allclose(got[0], (_tf1_resize_loop(img[0].astype(np.float64), 299) - 128)
                               / 128, atol=2e-4)  # float32 scale vs float64 here
    assert got.min() >= -1 and got.max() <= 127 / 128
    np.testing.assert_array_equal(np.asarray(preprocess(img.astype(np.float32), "adm")), got)
    same = rng.integers(0, 256, (1, 299, 299, 3), dtype=np.uint8)  # 299 in: no resampling
    np.testing.assert_array_equal(np.asarray(preprocess(same, "adm")), (same - 128.0) / 128)


def test_pytorch_fid_preprocess_is_half_pixel_bilinear():
    rng = np.random.default_rng(2)
    img = rng.integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    got = np.asarray(preprocess(img, "pytorch_fid"))
    for b in range(2):
        want = 2 * _half_pixel_resize(img[b] / 255.0, 299) - 1
        np.testing.assert_allclose(got[b], want, atol=1e-5)  # float32 rounding
    assert not np.allclose(got, np.asarray(preprocess(img, "adm")), atol=1e-2)
    with pytest.raises(ValueError, match="preprocess mode"):
        preprocess(img, "bicubic")
    with pytest.raises(ValueError, match="NHWC"):
        preprocess(img[..., :1], "adm")


def test_pytorch_fid_preprocess_matches_torch_interpolate():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(3)
    for size in (32, 256, 400):  # up- and downsampling
        img = rng.integers(0, 256, (1, size, size, 3), dtype=np.uint8)
        x = torch.from_numpy(img).permute(0, 3, 1, 2).float() / 255
        want = 2 * torch.nn.functional.interpolate(x, size=(299, 299), mode="bilinear",
                                                   align_corners=False) - 1
        got = np.asarray(preprocess(img, "pytorch_fid"))
        np.testing.assert_allclose(got, want.permute(0, 2, 3, 1).numpy(), atol=3e-6)


def test_pools_against_numpy():
    x = np.random.default_rng(4).standard_normal((1, 4, 5, 2)).astype(np.float32)
    got = np.asarray(avg_pool_exclude_pad(x))
    got_max = np.asarray(max_pool(x - 10, 1, padding=1))  # all negative: padding never wins
    for i in range(4):
        for j in range(5):
            window = x[0, max(i - 1, 0):i + 2, max(j - 1, 0):j + 2]
            np.testing.assert_allclose(got[0, i, j], window.mean(axis=(0, 1)), rtol=1e-6)
            np.testing.assert_allclose(got_max[0, i, j], window.max(axis=(0, 1)) - 10)
    assert got[0, 0, 0, 0] == pytest.approx(x[0, :2, :2, 0].mean())  # 4 values, not 9


def test_compute_features_batches_pads_and_streams(model, forward, images, tmp_path):
    feats = evaluator.compute_features(images[:3], model, batch_size=2)
    assert {k: v.shape[0] for k, v in feats.items()} == {"pool": 3, "spatial": 3, "logits": 3}
    first = forward(images[:2])
    last = forward(np.concatenate([images[2:3], np.zeros_like(images[:1])]))
    for k in feats:
        np.testing.assert_allclose(feats[k][:2], first[k], rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(feats[k][2], last[k][0], rtol=1e-6, atol=1e-6)
    uneven = evaluator.compute_features(iter([images[:1], images[1:3]]), model, batch_size=2)
    path = tmp_path / "samples.npz"
    np.savez(path, arr_0=images[:3])
    streamed = evaluator.compute_features(str(path), model, batch_size=2)
    for k in feats:
        np.testing.assert_array_equal(uneven[k], feats[k])
        np.testing.assert_array_equal(streamed[k], feats[k])
    with pytest.raises(ValueError, match=r"\[B, H, W, 3\]"):
        evaluator.compute_features(images[:2, ..., 0], model, batch_size=2)


def test_evaluate_wiring(model, images, tmp_path, monkeypatch):
    real, fake = images[:4], images[1:5]
    stats = evaluator.reference_statistics(real, model, batch_size=2, num_pool=None)
    assert stats["num_images"] == 4 and stats["preprocess"] == "adm"
    path = tmp_path / "ref.npz"
    write_reference(path, stats)
    # The real 2048-d sqrtm takes ~45 s per call on a 2-core CPU; record the calls instead.
    calls = []
    monkeypatch.setattr(evaluator.metrics, "frechet_distance",
                        lambda *a: calls.append(a) or float(len(calls)))
    scores = evaluator.evaluate(fake, path, model, batch_size=2)
    fake_feats = evaluator.compute_features(fake, model, batch_size=2)
    mu, sigma = metrics.feature_stats(fake_feats["pool"])
    mu_s, _ = metrics.feature_stats(fake_feats["spatial"])
    np.testing.assert_allclose(calls[0][0], mu, rtol=1e-6)
    np.testing.assert_allclose(calls[0][1], sigma, rtol=1e-6, atol=1e-9)
    np.testing.assert_array_equal(calls[0][2], stats["mu"])
    np.testing.assert_allclose(calls[1][0], mu_s, rtol=1e-6)
    np.testing.assert_array_equal(calls[1][3], stats["sigma_s"])
    precision, recall = metrics.precision_recall(stats["pool"], fake_feats["pool"])
    assert scores == {"fid": 1.0, "sfid": 2.0,
                      "inception_score": pytest.approx(metrics.inception_score(
                          fake_feats["logits"])),
                      "precision": precision, "recall": recall}
    # An ADM-style batch (images + statistics, no pool): reference features from its images.
    adm = tmp_path / "adm.npz"
    np.savez(adm, arr_0=real, **{k: stats[k] for k in ("mu", "sigma", "mu_s", "sigma_s")})
    assert evaluator.evaluate(real, adm, model, batch_size=2)["precision"] == 1.0
    assert load_reference(adm).pool is None
    write_reference(path, {**stats, "preprocess": "pytorch_fid"})
    with pytest.raises(ValueError, match="preprocess='pytorch_fid'"):
        evaluator.evaluate(fake, path, model, batch_size=2)
