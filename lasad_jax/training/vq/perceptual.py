"""LPIPS (VGG16 variant) as a frozen Flax NNX module: the perceptual term of VQ training.

LlamaGen's tokenizer loss adds LPIPS between input and reconstruction with weight 1.0
(docs/tokenizer.md). LPIPS compares the two images through VGG16's five `relu*_*` stages:
each feature vector is scaled to unit length over channels, the squared differences are
weighted per channel by learned non-negative "lin" weights (a 1x1 conv to one channel),
averaged over space and summed over stages.

Weights never come from the network: `load_lpips` reads a local `.npz` in this project's
layout, which `python -m lasad_jax.convert.lpips` writes from the two PyTorch files a
user downloads (torchvision's VGG16 ImageNet weights and LPIPS' `vgg.pth`). Layout, all
float32: `stage{s}_conv{j}_kernel` `[3, 3, in, out]` (HWIO), `stage{s}_conv{j}_bias`
`[out]`, `lin{s}` `[C_s]`, and `layout` = `LPIPS_LAYOUT`.

The weights are `LPIPSWeight` variables, not `nnx.Param`, so `nnx.split(model,
nnx.Param, ...)` or an optimizer over `nnx.Param` of a module that holds an LPIPS never
trains them; the forward pass also stops their gradients. Gradients do flow into the
images, which is what the generator step needs.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

LPIPS_LAYOUT = "lasad_lpips_vgg_v1"

# Conv output channels per stage; stage s > 0 starts with a 2x2 max-pool (torchvision's
# vgg16().features[0:30], cut after relu1_2, relu2_2, relu3_3, relu4_3, relu5_3).
VGG16_STAGES: tuple[tuple[int, ...], ...] = (
    (64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512))

# LPIPS' ScalingLayer: maps [-1, 1] images to roughly ImageNet-normalised VGG inputs.
LPIPS_SHIFT = (-0.030, -0.088, -0.188)
LPIPS_SCALE = (0.458, 0.448, 0.450)

CONVERT_COMMAND = ("python -m lasad_jax.convert.lpips --vgg16 vgg16-397923af.pth "
                   "--lin vgg.pth --out lpips_vgg.npz")

_NORM_EPS = 1e-10  # LPIPS' normalize_tensor epsilon, added to the norm.
_SQRT_FLOOR = 1e-30  # keeps d sqrt(s)/ds finite where a pixel's features are all zero.


class LPIPSWeight(nnx.Variable):
    """A pretrained constant: excluded from `nnx.Param` filters, hence from training."""


def unit_normalize(features: jax.Array) -> jax.Array:
    """Scales each feature vector (last axis) to unit L2 norm, as LPIPS does, so the
    distance compares feature directions and not the activation scale of a stage.

    The floor under the squared norm only matters at exactly-zero vectors (post-ReLU
    pixels with no activation), where sqrt's derivative would otherwise be infinite and
    turn gradients into NaN; elsewhere the value is LPIPS' `x / (||x|| + 1e-10)`.
    """
    sq = jnp.sum(jnp.square(features), axis=-1, keepdims=True)
    return features / (jnp.sqrt(jnp.maximum(sq, _SQRT_FLOOR)) + _NORM_EPS)


def stage_distance(feats0: jax.Array, feats1: jax.Array, lin: jax.Array) -> jax.Array:
    """One stage's LPIPS term: `[N, H, W, C]` features, `[C]` lin weights -> `[N]`."""
    diff = jnp.square(unit_normalize(feats0) - unit_normalize(feats1))
    return jnp.mean(jnp.einsum("nhwc,c->nhw", diff, lin), axis=(1, 2))


class _Conv3x3(nnx.Module):
    """3x3 stride-1 'same' conv + ReLU with frozen weights (VGG's only layer type)."""

    def __init__(self, cin: int, cout: int, rng: np.random.Generator | None):
        kernel = np.zeros((3, 3, cin, cout), np.float32)
        if rng is not None:  # He-normal test weights; else placeholders for `load_lpips`
            kernel = rng.normal(0.0, np.sqrt(2.0 / (9 * cin)), kernel.shape)
        self.kernel = LPIPSWeight(jnp.asarray(kernel, jnp.float32))
        self.bias = LPIPSWeight(jnp.zeros((cout,), jnp.float32))

    def __call__(self, x: jax.Array) -> jax.Array:
        kernel = jax.lax.stop_gradient(self.kernel[...]).astype(x.dtype)
        bias = jax.lax.stop_gradient(self.bias[...]).astype(x.dtype)
        y = jax.lax.conv_general_dilated(x, kernel, (1, 1), ((1, 1), (1, 1)),
                                         dimension_numbers=("NHWC", "HWIO", "NHWC"))
        return jax.nn.relu(y + bias)


def _max_pool_2x2(x: jax.Array) -> jax.Array:
    # torch's MaxPool2d(2, 2) floors odd sizes, as VALID padding does.
    return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")


class LPIPS(nnx.Module):
    """LPIPS distance between two NHWC image batches in [-1, 1]; returns `[N]`.

    `stages` gives the conv widths per stage (`VGG16_STAGES` for the real metric; tests
    use tiny ones). `seed=None` builds zero placeholders that `load_lpips` fills; a seed
    gives He-normal convs and lin weights uniform in [0, 1), only useful for tests. The
    weights are never trained, so they are drawn with numpy rather than `nnx.Rngs`
    (no per-shape JAX compilations when a test builds one). `dtype` is the conv compute
    dtype (bfloat16 halves the cost on accelerators); normalisation and the distance
    are always float32.
    """

    def __init__(self, stages: Sequence[Sequence[int]] = VGG16_STAGES, in_channels: int = 3,
                 *, seed: int | None = None, dtype: jnp.dtype = jnp.float32):
        if in_channels != 3:
            raise ValueError(f"LPIPS scales RGB inputs; in_channels must be 3, got {in_channels}")
        self.stage_sizes = tuple(len(s) for s in stages)
        self.dtype = dtype
        rng = None if seed is None else np.random.default_rng(seed)
        convs, lins, cin = [], [], in_channels
        for widths in stages:
            for cout in widths:
                convs.append(_Conv3x3(cin, cout, rng))
                cin = cout
            lin = np.zeros((cin,)) if rng is None else rng.uniform(0.0, 1.0, (cin,))
            lins.append(LPIPSWeight(jnp.asarray(lin, jnp.float32)))
        self.convs = nnx.List(convs)
        self.lins = nnx.List(lins)

    def features(self, images: jax.Array) -> list[jax.Array]:
        """Per-stage ReLU features of already-scaled inputs, `[N, H_s, W_s, C_s]` each."""
        x, outs, i = images.astype(self.dtype), [], 0
        for s, size in enumerate(self.stage_sizes):
            if s > 0:
                x = _max_pool_2x2(x)
            for _ in range(size):
                x = self.convs[i](x)
                i += 1
            outs.append(x.astype(jnp.float32))
        return outs

    def __call__(self, images0: jax.Array, images1: jax.Array) -> jax.Array:
        if images0.shape != images1.shape or images0.ndim != 4 or images0.shape[-1] != 3:
            raise ValueError("LPIPS takes two [N, H, W, 3] batches of the same shape, got "
                             f"{images0.shape} and {images1.shape}")
        shift = jnp.asarray(LPIPS_SHIFT, jnp.float32)
        scale = jnp.asarray(LPIPS_SCALE, jnp.float32)
        n = images0.shape[0]
        # One VGG pass over both batches: half the kernel launches of two passes.
        both = (jnp.concatenate([images0, images1]).astype(jnp.float32) - shift) / scale
        total = jnp.zeros((n,), jnp.float32)
        for feats, lin in zip(self.features(both), self.lins):
            total = total + stage_distance(feats[:n], feats[n:], jax.lax.stop_gradient(lin[...]))
        return total


def lpips_from_arrays(arrays: Mapping[str, np.ndarray], source: str = "arrays",
                      dtype: jnp.dtype = jnp.float32) -> LPIPS:
    """Builds an `LPIPS` from arrays in the `.npz` layout, checking every shape.

    The stage structure is read from the keys, so both the real VGG16 layout and tiny
    test layouts load; errors name the key and `source` (the file).
    """
    if "layout" in arrays and str(np.asarray(arrays["layout"])) != LPIPS_LAYOUT:
        raise ValueError(f"{source}: layout {str(np.asarray(arrays['layout']))!r} is not "
                         f"{LPIPS_LAYOUT!r}; re-create it with: {CONVERT_COMMAND}")
    stages, cin = [], 3
    for s in range(len(VGG16_STAGES)):
        widths = []
        while f"stage{s}_conv{len(widths)}_kernel" in arrays:
            j = len(widths)
            kernel = np.asarray(arrays[f"stage{s}_conv{j}_kernel"])
            bias_key = f"stage{s}_conv{j}_bias"
            if kernel.ndim != 4 or kernel.shape[:3] != (3, 3, cin):
                raise ValueError(f"{source}: stage{s}_conv{j}_kernel has shape {kernel.shape}, "
                                 f"expected (3, 3, {cin}, out)")
            if bias_key not in arrays or np.shape(arrays[bias_key]) != (kernel.shape[3],):
                got = np.shape(arrays[bias_key]) if bias_key in arrays else "nothing"
                raise ValueError(f"{source}: {bias_key} has shape {got}, "
                                 f"expected ({kernel.shape[3]},)")
            cin = kernel.shape[3]
            widths.append(cin)
        if not widths:
            raise ValueError(f"{source}: no stage{s}_conv0_kernel; LPIPS needs 5 stages. "
                             f"Re-create the file with: {CONVERT_COMMAND}")
        lin = np.asarray(arrays.get(f"lin{s}", np.zeros((0,))))
        if lin.shape != (cin,):
            raise ValueError(f"{source}: lin{s} has shape {lin.shape}, expected ({cin},)")
        if np.any(lin < 0):
            raise ValueError(f"{source}: lin{s} has negative weights; LPIPS lin weights are "
                             "non-negative (clamped in LPIPS training)")
        stages.append(widths)
    model = LPIPS(stages, seed=None, dtype=dtype)
    i = 0
    for s, widths in enumerate(stages):
        for j in range(len(widths)):
            name = f"stage{s}_conv{j}"
            model.convs[i].kernel[...] = jnp.asarray(arrays[f"{name}_kernel"], jnp.float32)
            model.convs[i].bias[...] = jnp.asarray(arrays[f"{name}_bias"], jnp.float32)
            i += 1
        model.lins[s][...] = jnp.asarray(arrays[f"lin{s}"], jnp.float32)
    return model


def load_lpips(path: str | os.PathLike, dtype: jnp.dtype = jnp.float32) -> LPIPS:
    """Reads an LPIPS `.npz` written by `lasad_jax.convert.lpips` (see module doc)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"LPIPS weights {str(path)!r} not found; create them from "
                                f"the PyTorch files with: {CONVERT_COMMAND}")
    with np.load(path, allow_pickle=False) as data:
        arrays = {k: data[k] for k in data.files}
    return lpips_from_arrays(arrays, source=str(path), dtype=dtype)


def perceptual_problems(perceptual_weight: float, perceptual_weights: str | None) -> list[str]:
    """Config problems of the perceptual term, for a fail-fast config check.

    Weight 0 needs no network (and no file); a positive weight needs an existing file.
    """
    if perceptual_weight < 0:
        return [f"loss.perceptual_weight must be >= 0, got {perceptual_weight}"]
    if perceptual_weight == 0:
        return []
    if not perceptual_weights:
        return [(f"loss.perceptual_weights is empty but loss.perceptual_weight="
                 f"{perceptual_weight}: download torchvision's VGG16 weights and LPIPS' "
                 f"vgg.pth, convert them with `{CONVERT_COMMAND}` and set "
                 "loss.perceptual_weights to the .npz, or set loss.perceptual_weight=0 to "
                 "train without the perceptual term")]
    if not os.path.isfile(perceptual_weights):
        return [(f"loss.perceptual_weights={perceptual_weights!r} does not exist; "
                 f"create it with `{CONVERT_COMMAND}`")]
    return []


def build_perceptual(perceptual_weight: float, perceptual_weights: str | None,
                     dtype: jnp.dtype = jnp.float32) -> LPIPS | None:
    """The LPIPS network a config asks for, or None when `perceptual_weight == 0`."""
    problems = perceptual_problems(perceptual_weight, perceptual_weights)
    if problems:
        raise ValueError(problems[0])
    if perceptual_weight == 0:
        return None
    return load_lpips(perceptual_weights, dtype=dtype)
