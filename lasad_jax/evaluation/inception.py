"""The FID InceptionV3 in Flax NNX: the 2015 TensorFlow graph as pytorch-fid ports it.

ADM's evaluator (FID, sFID, IS, precision/recall) measures images with Inception-v3 as
frozen in `classify_image_graph_def.pb` (2015-12-05); its weights are public as pytorch-fid's
`pt_inception-2015-12-05-6726825d.pth` (`lasad_jax.convert.inception` makes the `.npz`,
`lasad_jax.evaluation.weights` loads it).
That is torchvision's Inception-v3 with the graph's quirks: the pool branches of Mixed_5b-5d,
6b-6e and 7b average without counting padded zeros (`count_include_pad=False`); Mixed_7c's
pool branch is a 3x3 MAX pool; convs have no bias and are followed by BatchNorm (eps 0.001,
running statistics) and ReLU; the classifier is 1008-way. Module names equal pytorch-fid's
state-dict names (`Mixed_6d.branch1x1.conv`), so conversion only renames leaves.

Outputs of `InceptionV3.__call__` (float32, per image):
  * `pool` [2048]: global average pool after Mixed_7c (TF `pool_3:0`): FID, precision/recall;
  * `spatial` [2023]: sFID's TF `mixed_6/conv:0`, the post-BatchNorm-and-ReLU output of the
    1x1 branch of torchvision's Mixed_6d (TF `mixed, mixed_1, mixed_2` are 5b-5d, `mixed_3`
    is 6a), its first 7 of 192 channels flattened in NHWC order (17 * 17 * 7), exactly
    ADM's `spatial[..., :7].reshape([N, -1])`, so it lines up with ADM's `mu_s`/`sigma_s`;
  * `logits` [1008]: `pool @ W` WITHOUT the classifier bias: ADM (like improved-gan) takes
    only the weight input of the graph's `softmax/logits/MatMul` for the Inception Score.

Preprocessing (`preprocess`), from uint8 or [0, 255] float NHWC images of any size:
  * "adm" (default), what the TF graph does to what ADM feeds it: TF1 `ResizeBilinear` to
    299 with align_corners=False in legacy (not half-pixel) sampling, output pixel i reads
    input coordinate i * in/out (float32) with floor/ceil neighbours clamped to the edge;
    then (x - 128) / 128 in [-1, 0.9921875]. ADM's reference statistics were made so.
  * "pytorch_fid": x / 255, `jax.image.resize(..., "bilinear", antialias=False)` (equal to
    torch `F.interpolate(mode="bilinear", align_corners=False)`: half-pixel centres, edges
    clamped; tested for up- and downsampling), then 2x - 1 in [-1, 1]. Its grid sits
    0.5 * in/out - 0.5 input pixels from ADM's (-0.07 at 256 -> 299) and its scale differs
    by 128/127.5, so features (and FID) move: never mix modes between reference and samples.
Everything is deterministic; convs and matmuls run at `Precision.HIGHEST` (no TF32 on GPUs,
no single-pass bf16 on TPUs).
"""
from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

PreprocessMode = Literal["adm", "pytorch_fid"]
PREPROCESS_MODES: tuple[str, ...] = ("adm", "pytorch_fid")
INPUT_SIZE = 299
POOL_DIM = 2048
SPATIAL_CHANNELS = 7  # ADM keeps the first 7 of mixed_6/conv's 192 channels
SPATIAL_DIM = 17 * 17 * SPATIAL_CHANNELS  # 2023
NUM_LOGITS = 1008
BN_EPSILON = 1e-3
_HIGHEST = jax.lax.Precision.HIGHEST


# ----------------------------------------------------------------------------- preprocessing

def _tf1_legacy_taps(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Lower/upper source indices and lerp weights of TF1's ResizeBilinear, legacy mode.

    Mirrors `compute_interpolation_weights` with `LegacyScaler` in TF's
    resize_bilinear_op.cc: scale = float(in) / out, src = float(i) * scale in float32.
    """
    scale = np.float32(in_size) / np.float32(out_size)
    src = np.arange(out_size, dtype=np.float32) * scale
    lower = np.maximum(np.floor(src), 0).astype(np.int32)
    upper = np.minimum(np.ceil(src), in_size - 1).astype(np.int32)
    return lower, upper, (src - np.floor(src)).astype(np.float32)


def resize_tf1_bilinear(x: jax.Array, size: int) -> jax.Array:
    """TF1 `tf.image.resize_bilinear(x, [size, size], align_corners=False)` on NHWC float32.

    Interpolates along width first, then height, in TF's order
    (`top = tl + (tr - tl) * dx; out = top + (bottom - top) * dy`), so float32 results match
    TF's CPU kernel to rounding.
    """
    _, h, w, _ = x.shape
    y_lo, y_hi, dy = _tf1_legacy_taps(h, size)
    x_lo, x_hi, dx = _tf1_legacy_taps(w, size)
    top, bottom = x[:, y_lo], x[:, y_hi]
    dx = jnp.asarray(dx)[None, None, :, None]
    top = top[:, :, x_lo] + (top[:, :, x_hi] - top[:, :, x_lo]) * dx
    bottom = bottom[:, :, x_lo] + (bottom[:, :, x_hi] - bottom[:, :, x_lo]) * dx
    return top + (bottom - top) * jnp.asarray(dy)[None, :, None, None]


def preprocess(images: jax.Array | np.ndarray, mode: PreprocessMode = "adm",
               size: int = INPUT_SIZE) -> jax.Array:
    """uint8 (or float in [0, 255]) NHWC RGB images -> the network's float32 input.

    See the module docstring for the two modes; `size` is 299 for the network and smaller
    only in tests of the resize itself.
    """
    if mode not in PREPROCESS_MODES:
        raise ValueError(f"preprocess mode {mode!r} is not one of {PREPROCESS_MODES}")
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"expected images [N, H, W, 3] (NHWC, RGB), got shape {images.shape}")
    x = jnp.asarray(images).astype(jnp.float32)
    if mode == "adm":
        return (resize_tf1_bilinear(x, size) - 128.0) / 128.0
    x = x / 255.0
    x = jax.image.resize(x, (x.shape[0], size, size, 3), method="bilinear", antialias=False)
    return 2.0 * x - 1.0


# ------------------------------------------------------------------------------------ layers

def _pair(v: int | tuple[int, int]) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


def max_pool(x: jax.Array, stride: int, padding: int = 0) -> jax.Array:
    """3x3 max pool; padding (if any) never wins, as in torch and TF."""
    pad = ((0, 0), (padding, padding), (padding, padding), (0, 0))
    return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 3, 3, 1), (1, stride, stride, 1),
                                 pad)


def avg_pool_exclude_pad(x: jax.Array) -> jax.Array:
    """3x3 stride-1 average pool over the valid pixels only (TF SAME average pool,
    torch `count_include_pad=False`): border pixels average 4 or 6 values, not 9."""
    _, h, w, _ = x.shape
    pad = ((0, 0), (1, 1), (1, 1), (0, 0))
    total = jax.lax.reduce_window(x, 0.0, jax.lax.add, (1, 3, 3, 1), (1, 1, 1, 1), pad)
    rows = np.minimum(np.arange(h) + 1, h - 1) - np.maximum(np.arange(h) - 1, 0) + 1
    cols = np.minimum(np.arange(w) + 1, w - 1) - np.maximum(np.arange(w) - 1, 0) + 1
    count = (rows[:, None] * cols[None, :]).astype(np.float32)
    return total / jnp.asarray(count)[None, :, :, None]


class BasicConv2d(nnx.Module):
    """Conv (no bias) -> BatchNorm(eps 0.001, running statistics) -> ReLU."""

    def __init__(self, cin: int, cout: int, kernel_size: int | tuple[int, int], *,
                 stride: int = 1, padding: int | tuple[int, int] = 0, rngs: nnx.Rngs):
        ph, pw = _pair(padding)
        self.conv = nnx.Conv(cin, cout, _pair(kernel_size), strides=stride,
                             padding=((ph, ph), (pw, pw)), use_bias=False, precision=_HIGHEST,
                             rngs=rngs)
        self.bn = nnx.BatchNorm(cout, use_running_average=True, epsilon=BN_EPSILON, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return jax.nn.relu(self.bn(self.conv(x)))


class InceptionA(nnx.Module):
    """35x35 block (Mixed_5b-5d), FID variant: pool branch excludes padding."""

    def __init__(self, cin: int, pool_features: int, *, rngs: nnx.Rngs):
        self.branch1x1 = BasicConv2d(cin, 64, 1, rngs=rngs)
        self.branch5x5_1 = BasicConv2d(cin, 48, 1, rngs=rngs)
        self.branch5x5_2 = BasicConv2d(48, 64, 5, padding=2, rngs=rngs)
        self.branch3x3dbl_1 = BasicConv2d(cin, 64, 1, rngs=rngs)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1, rngs=rngs)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, padding=1, rngs=rngs)
        self.branch_pool = BasicConv2d(cin, pool_features, 1, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        b5 = self.branch5x5_2(self.branch5x5_1(x))
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        bp = self.branch_pool(avg_pool_exclude_pad(x))
        return jnp.concatenate([self.branch1x1(x), b5, b3, bp], axis=-1)


class InceptionB(nnx.Module):
    """35x35 -> 17x17 reduction (Mixed_6a)."""

    def __init__(self, cin: int, *, rngs: nnx.Rngs):
        self.branch3x3 = BasicConv2d(cin, 384, 3, stride=2, rngs=rngs)
        self.branch3x3dbl_1 = BasicConv2d(cin, 64, 1, rngs=rngs)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1, rngs=rngs)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, stride=2, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return jnp.concatenate([self.branch3x3(x), b3, max_pool(x, 2)], axis=-1)


class InceptionC(nnx.Module):
    """17x17 block with factorised 7x7 convs (Mixed_6b-6e), FID variant."""

    def __init__(self, cin: int, c7: int, *, rngs: nnx.Rngs):
        self.branch1x1 = BasicConv2d(cin, 192, 1, rngs=rngs)
        self.branch7x7_1 = BasicConv2d(cin, c7, 1, rngs=rngs)
        self.branch7x7_2 = BasicConv2d(c7, c7, (1, 7), padding=(0, 3), rngs=rngs)
        self.branch7x7_3 = BasicConv2d(c7, 192, (7, 1), padding=(3, 0), rngs=rngs)
        self.branch7x7dbl_1 = BasicConv2d(cin, c7, 1, rngs=rngs)
        self.branch7x7dbl_2 = BasicConv2d(c7, c7, (7, 1), padding=(3, 0), rngs=rngs)
        self.branch7x7dbl_3 = BasicConv2d(c7, c7, (1, 7), padding=(0, 3), rngs=rngs)
        self.branch7x7dbl_4 = BasicConv2d(c7, c7, (7, 1), padding=(3, 0), rngs=rngs)
        self.branch7x7dbl_5 = BasicConv2d(c7, 192, (1, 7), padding=(0, 3), rngs=rngs)
        self.branch_pool = BasicConv2d(cin, 192, 1, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        bd = self.branch7x7dbl_1(x)
        for layer in (self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4,
                      self.branch7x7dbl_5):
            bd = layer(bd)
        bp = self.branch_pool(avg_pool_exclude_pad(x))
        return jnp.concatenate([self.branch1x1(x), b7, bd, bp], axis=-1)


class InceptionD(nnx.Module):
    """17x17 -> 8x8 reduction (Mixed_7a)."""

    def __init__(self, cin: int, *, rngs: nnx.Rngs):
        self.branch3x3_1 = BasicConv2d(cin, 192, 1, rngs=rngs)
        self.branch3x3_2 = BasicConv2d(192, 320, 3, stride=2, rngs=rngs)
        self.branch7x7x3_1 = BasicConv2d(cin, 192, 1, rngs=rngs)
        self.branch7x7x3_2 = BasicConv2d(192, 192, (1, 7), padding=(0, 3), rngs=rngs)
        self.branch7x7x3_3 = BasicConv2d(192, 192, (7, 1), padding=(3, 0), rngs=rngs)
        self.branch7x7x3_4 = BasicConv2d(192, 192, 3, stride=2, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        b3 = self.branch3x3_2(self.branch3x3_1(x))
        b7 = self.branch7x7x3_1(x)
        for layer in (self.branch7x7x3_2, self.branch7x7x3_3, self.branch7x7x3_4):
            b7 = layer(b7)
        return jnp.concatenate([b3, b7, max_pool(x, 2)], axis=-1)


class InceptionE(nnx.Module):
    """8x8 block (Mixed_7b with an average pool branch, Mixed_7c with a MAX pool branch)."""

    def __init__(self, cin: int, *, pool: Literal["avg", "max"], rngs: nnx.Rngs):
        self.pool = pool
        self.branch1x1 = BasicConv2d(cin, 320, 1, rngs=rngs)
        self.branch3x3_1 = BasicConv2d(cin, 384, 1, rngs=rngs)
        self.branch3x3_2a = BasicConv2d(384, 384, (1, 3), padding=(0, 1), rngs=rngs)
        self.branch3x3_2b = BasicConv2d(384, 384, (3, 1), padding=(1, 0), rngs=rngs)
        self.branch3x3dbl_1 = BasicConv2d(cin, 448, 1, rngs=rngs)
        self.branch3x3dbl_2 = BasicConv2d(448, 384, 3, padding=1, rngs=rngs)
        self.branch3x3dbl_3a = BasicConv2d(384, 384, (1, 3), padding=(0, 1), rngs=rngs)
        self.branch3x3dbl_3b = BasicConv2d(384, 384, (3, 1), padding=(1, 0), rngs=rngs)
        self.branch_pool = BasicConv2d(cin, 192, 1, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        b3 = self.branch3x3_1(x)
        b3 = jnp.concatenate([self.branch3x3_2a(b3), self.branch3x3_2b(b3)], axis=-1)
        bd = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        bd = jnp.concatenate([self.branch3x3dbl_3a(bd), self.branch3x3dbl_3b(bd)], axis=-1)
        pooled = max_pool(x, 1, padding=1) if self.pool == "max" else avg_pool_exclude_pad(x)
        return jnp.concatenate([self.branch1x1(x), b3, bd, self.branch_pool(pooled)], axis=-1)


# ------------------------------------------------------------------------------------- model

class InceptionV3(nnx.Module):
    """FID Inception-v3 (see the module docstring); `__call__` returns pool/spatial/logits.

    Randomly initialised unless loaded with `lasad_jax.evaluation.weights.load_inception`;
    the random network has the right shapes and is useful only for tests.
    """

    def __init__(self, *, preprocess: PreprocessMode = "adm", rngs: nnx.Rngs):
        if preprocess not in PREPROCESS_MODES:
            raise ValueError(f"preprocess mode {preprocess!r} is not one of {PREPROCESS_MODES}")
        self.preprocess = preprocess
        self.Conv2d_1a_3x3 = BasicConv2d(3, 32, 3, stride=2, rngs=rngs)
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, 3, rngs=rngs)
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, 3, padding=1, rngs=rngs)
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, 1, rngs=rngs)
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, 3, rngs=rngs)
        self.Mixed_5b = InceptionA(192, 32, rngs=rngs)
        self.Mixed_5c = InceptionA(256, 64, rngs=rngs)
        self.Mixed_5d = InceptionA(288, 64, rngs=rngs)
        self.Mixed_6a = InceptionB(288, rngs=rngs)
        self.Mixed_6b = InceptionC(768, 128, rngs=rngs)
        self.Mixed_6c = InceptionC(768, 160, rngs=rngs)
        self.Mixed_6d = InceptionC(768, 160, rngs=rngs)
        self.Mixed_6e = InceptionC(768, 192, rngs=rngs)
        self.Mixed_7a = InceptionD(768, rngs=rngs)
        self.Mixed_7b = InceptionE(1280, pool="avg", rngs=rngs)
        self.Mixed_7c = InceptionE(2048, pool="max", rngs=rngs)
        self.fc = nnx.Linear(POOL_DIM, NUM_LOGITS, precision=_HIGHEST, rngs=rngs)

    def trunk_to_mixed_6c(self, x: jax.Array) -> jax.Array:
        """Preprocessed [N, 299, 299, 3] -> Mixed_6c's output [N, 17, 17, 768]."""
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = max_pool(x, 2)
        x = max_pool(self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x)), 2)
        for block in (self.Mixed_5b, self.Mixed_5c, self.Mixed_5d, self.Mixed_6a,
                      self.Mixed_6b, self.Mixed_6c):
            x = block(x)
        return x

    def features(self, x: jax.Array) -> dict[str, jax.Array]:
        """Preprocessed input -> {'pool', 'spatial', 'logits'} (shapes in the module doc)."""
        x = self.trunk_to_mixed_6c(x)
        spatial = self.Mixed_6d.branch1x1(x)[..., :SPATIAL_CHANNELS]  # TF mixed_6/conv:0
        for block in (self.Mixed_6d, self.Mixed_6e, self.Mixed_7a, self.Mixed_7b, self.Mixed_7c):
            x = block(x)
        pool = jnp.mean(x, axis=(1, 2))  # TF pool_3: 8x8 VALID average pool
        logits = jnp.dot(pool, self.fc.kernel[...], precision=_HIGHEST)  # no bias, as ADM's IS
        return {"pool": pool, "spatial": spatial.reshape(spatial.shape[0], -1),
                "logits": logits}

    def __call__(self, images: jax.Array | np.ndarray) -> dict[str, jax.Array]:
        """uint8 or [0, 255] float NHWC images of any size -> features (float32)."""
        return self.features(preprocess(images, self.preprocess))


# ------------------------------------------------------------------------ building from arrays

Path = tuple[str, ...]


def abstract_inception(preprocess: PreprocessMode = "adm") -> InceptionV3:
    """The model's structure and shapes without allocating or initialising weights."""
    return nnx.eval_shape(lambda: InceptionV3(preprocess=preprocess, rngs=nnx.Rngs(0)))


@functools.lru_cache(maxsize=None)
def _skeleton(preprocess: PreprocessMode) -> tuple[nnx.GraphDef, nnx.State]:
    """`abstract_inception` split, built once per mode: tracing the 94 layers' construction
    takes seconds on a CPU, and an evaluation, a reference and a test each load a
    network. Callers must not change the cached state (`inception_from_arrays` fills a
    copy)."""
    return nnx.split(abstract_inception(preprocess))


@functools.lru_cache(maxsize=1)
def _expected_shapes() -> tuple[tuple[Path, tuple[int, ...]], ...]:
    return tuple((tuple(str(p) for p in path), tuple(var.shape))
                 for path, var in nnx.to_flat_state(_skeleton("adm")[1]))


def expected_shapes() -> dict[Path, tuple[int, ...]]:
    """Every variable (parameters and BatchNorm statistics): path -> shape (cached)."""
    return dict(_expected_shapes())


def inception_from_arrays(arrays: Mapping[Path, np.ndarray],
                          preprocess: PreprocessMode = "adm", source: str = "arrays"
                          ) -> InceptionV3:
    """An `InceptionV3` holding `arrays` (one per path of `expected_shapes`); ValueError
    listing every missing, unknown and mis-shaped path at once, naming `source`."""
    shapes = expected_shapes()
    missing = sorted("/".join(p) for p in set(shapes) - set(arrays))
    unknown = sorted("/".join(p) for p in set(arrays) - set(shapes))
    problems = [f"missing ({len(missing)}): {missing}"] if missing else []
    if unknown:
        problems.append(f"unknown ({len(unknown)}): {unknown}")
    problems += [f"shape of {'/'.join(p)}: expected {s}, got {tuple(np.shape(arrays[p]))}"
                 for p, s in shapes.items() if p in arrays and tuple(np.shape(arrays[p])) != s]
    if problems:
        raise ValueError(f"{source} does not match InceptionV3:\n  - " + "\n  - ".join(problems))
    graphdef, abstract = _skeleton(preprocess)
    state = jax.tree.map(lambda leaf: leaf, abstract)  # new containers: the cache stays
    pure: dict = {}
    for path in shapes:
        node = pure
        for part in path[:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = jnp.asarray(np.asarray(arrays[path], np.float32))
    nnx.replace_by_pure_dict(state, pure)
    return nnx.merge(graphdef, state)


def random_arrays(seed: int = 0) -> dict[Path, np.ndarray]:
    """Random but well-scaled variables (He-normal kernels, BatchNorm near identity), so
    activations keep their scale through the 94 layers. Made with numpy in well under a
    second, where `InceptionV3(rngs=...)` spends ~17 s initialising eagerly on a CPU."""
    rng = np.random.default_rng(seed)
    out: dict[Path, np.ndarray] = {}
    for path, shape in expected_shapes().items():
        leaf = path[-1]
        if leaf == "kernel":
            fan_in = int(np.prod(shape[:-1]))
            gain = 1.0 if path[0] == "fc" else 2.0
            value = rng.standard_normal(shape) * np.sqrt(gain / fan_in)
        elif leaf in ("scale", "var"):
            value = rng.uniform(0.5, 1.5, shape)
        else:  # bias, mean
            value = 0.1 * rng.standard_normal(shape)
        out[path] = value.astype(np.float32)
    return out


def random_inception(seed: int = 0, preprocess: PreprocessMode = "adm") -> InceptionV3:
    """An `InceptionV3` with `random_arrays(seed)`: for tests and timing, never for metrics."""
    return inception_from_arrays(random_arrays(seed), preprocess, source=f"random_arrays({seed})")
