"""Converts the PyTorch LPIPS (VGG) weights into the `.npz` that `load_lpips` reads.

Users download two files themselves (this project never fetches weights):
  * torchvision's VGG16 ImageNet state dict (`vgg16-397923af.pth`): the conv stack
    `features.{0,2,5,7,10,12,14,17,19,21,24,26,28}.weight` `[out, in, 3, 3]` and `.bias`;
    the classifier keys are ignored;
  * LPIPS' `vgg.pth` (richzhang/PerceptualSimilarity v0.1, the file LlamaGen and
    taming-transformers use): `lin{0..4}.model.1.weight` `[1, C, 1, 1]`.

    python -m lasad_jax.convert.lpips --vgg16 vgg16-397923af.pth --lin vgg.pth \
        --out lpips_vgg.npz

Reading `.pth` needs torch (CPU build is enough); `convert_lpips` itself works on any
mapping of arrays, so it is testable without torch.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from lasad_jax.convert import torch_io
from lasad_jax.convert.cli import refuse_existing, run
from lasad_jax.files import save_npz
from lasad_jax.training.vq.perceptual import LPIPS_LAYOUT, VGG16_STAGES

# torchvision `features` index of every conv, grouped by LPIPS stage (ReLUs and pools sit
# between; they have no weights).
VGG16_CONV_INDICES: tuple[tuple[int, ...], ...] = (
    (0, 2), (5, 7), (10, 12, 14), (17, 19, 21), (24, 26, 28))


def _expect(state: Mapping[str, Any], key: str, shape: tuple[int, ...], source: str) -> np.ndarray:
    if key not in state:
        raise KeyError(f"{source}: missing key {key!r} (expected shape {shape}); is this the "
                       "right file?")
    value = np.asarray(state[key], dtype=np.float32)
    if value.shape != shape:
        raise ValueError(f"{source}: {key!r} has shape {value.shape}, expected {shape}")
    return value


def convert_lpips(vgg_state: Mapping[str, Any], lin_state: Mapping[str, Any],
                  vgg_source: str = "vgg16 state dict",
                  lin_source: str = "LPIPS lin state dict") -> dict[str, np.ndarray]:
    """Maps the two state dicts to the `.npz` layout: OIHW kernels -> HWIO, lin -> `[C]`."""
    out: dict[str, np.ndarray] = {"layout": np.asarray(LPIPS_LAYOUT)}
    cin = 3
    for s, (indices, widths) in enumerate(zip(VGG16_CONV_INDICES, VGG16_STAGES)):
        for j, (idx, cout) in enumerate(zip(indices, widths)):
            w = _expect(vgg_state, f"features.{idx}.weight", (cout, cin, 3, 3), vgg_source)
            b = _expect(vgg_state, f"features.{idx}.bias", (cout,), vgg_source)
            out[f"stage{s}_conv{j}_kernel"] = np.ascontiguousarray(w.transpose(2, 3, 1, 0))
            out[f"stage{s}_conv{j}_bias"] = b
            cin = cout
        lin = _expect(lin_state, f"lin{s}.model.1.weight", (1, cin, 1, 1), lin_source)
        if np.any(lin < 0):
            raise ValueError(f"{lin_source}: 'lin{s}.model.1.weight' has negative entries; "
                             "LPIPS lin weights are non-negative: wrong file?")
        out[f"lin{s}"] = lin.reshape(cin)
    return out


def read_torch_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """A VGG16 or LPIPS `.pth` as numpy arrays (needs torch; see `convert/torch_io.py`)."""
    return torch_io.read_torch_state_dict(
        path, expected="torchvision's vgg16-397923af.pth or LPIPS' vgg.pth")


def save_lpips_npz(arrays: Mapping[str, np.ndarray], path: str | os.PathLike) -> None:
    """Writes the arrays uncompressed (VGG weights do not compress; loading stays fast),
    to exactly `path` (np.savez would append `.npz` to a bare name), atomically."""
    save_npz(path, **arrays)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--vgg16", required=True, help="torchvision vgg16 ImageNet .pth")
    parser.add_argument("--lin", required=True, help="LPIPS vgg.pth (lin layer weights)")
    parser.add_argument("--out", required=True,
                        help="output .npz for config.loss.perceptual_weights")
    args = parser.parse_args(argv)
    refuse_existing(args.out)
    arrays = convert_lpips(read_torch_state_dict(args.vgg16), read_torch_state_dict(args.lin),
                           vgg_source=args.vgg16, lin_source=args.lin)
    save_lpips_npz(arrays, args.out)
    n = sum(a.size for k, a in arrays.items() if k != "layout")
    print(f"wrote {args.out}: {n:,} weights; set config.loss.perceptual_weights={args.out!r}")


if __name__ == "__main__":
    sys.exit(run(main))
