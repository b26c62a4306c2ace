"""The README's figures, from measured JSON and from the model's own cache shapes.

    python benchmarks/figures.py      # after benchmarks/op_scaling.py (its JSON is committed)

* `docs/op_scaling.png`: forward+backward time of the operator against the number of
  tokens, log-log, read from `benchmarks/results/op_scaling_cpu.json` (LASAD chunked,
  the quadratic LASAD reference, causal softmax attention). A line of slope 1 is linear
  cost, slope 2 quadratic.
* `docs/decode_memory.png`: the bytes a sampler keeps per image while decoding, for
  LASADGen-L and its softmax twin, over image resolutions with the VQ-16 tokenizer
  (256 px = 16 x 16 tokens ... 1024 px = 64 x 64). Read from `jax.eval_shape` of each
  model's `init_cache`: no arrays are allocated, and the numbers are exactly what
  `generate` carries (LASAD: per layer and head, one `Dk x Dv` state per grid column plus
  the prefix state and two grid rows of keys and values, float32; softmax: keys and
  values of every slot, in the compute dtype, bf16 here). docs/decoding.md explains both.

`--figures decode_memory` redraws only that one (it needs no measurement).
"""

from __future__ import annotations

import argparse
import json
import pathlib

import jax
import numpy as np
from flax import nnx

ROOT = pathlib.Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"


def _plt():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def op_scaling(path: pathlib.Path) -> None:
    plt = _plt()
    data = json.loads((ROOT / "benchmarks/results/op_scaling_cpu.json").read_text())
    names = {"lasad_chunked": "LASAD, chunked (linear)", "lasad_reference":
             "LASAD, masked reference (quadratic)", "softmax": "causal softmax (XLA)"}
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for op, label in names.items():
        rows = sorted((r["tokens"], r["ms"]) for r in data["rows"]
                      if r["op"] == op and r["mode"] == "fwd_bwd" and r.get("ms"))
        if rows:
            t, ms = zip(*rows)
            ax.plot(t, ms, "o-", label=label)
    t = np.array([256, 16384])
    ref = [r["ms"] for r in data["rows"] if r["op"] == "lasad_chunked"
           and r["mode"] == "fwd_bwd" and r["tokens"] == 1024][0]
    ax.plot(t, ref * t / 1024, "k:", lw=1, label="slope 1 (linear)")
    ax.plot(t, ref * (t / 1024) ** 2, "k--", lw=1, label="slope 2 (quadratic)")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("tokens T")
    ax.set_ylabel("forward + backward, ms")
    info = data["info"]
    ax.set_title(f"operator cost, {info['heads']} heads, D={info['dim']}, {info['dtype']}\n"
                 f"{info['cores']}-core CPU, JAX {info['jax']}, {info['date']}", fontsize=10)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def cache_bytes(preset: str, mixer: str, grid: int, dtype: str = "bfloat16") -> int:
    """Bytes of one image's decoding cache (batch 1; guidance doubles it)."""
    from lasad_jax.models import LASADGen, ModelConfig
    from lasad_jax.models.config import PRESETS

    layers, heads, dim = PRESETS[preset]
    cfg = ModelConfig(vocab_size=16384, grid=(grid, grid), num_classes=1000, num_layers=layers,
                      num_heads=heads, dim=dim, mixer=mixer, dtype=dtype)
    model = nnx.eval_shape(lambda: LASADGen(cfg, rngs=nnx.Rngs(0)))
    cache = jax.eval_shape(lambda: model.init_cache(1))
    return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(cache))


def token_traffic(preset: str, grid: int) -> dict[str, int]:
    """Bytes of decoding state one token step reads and writes, per image, from the state
    layouts of the bf16 model (a count, not a measurement; docs/decoding.md). Per layer
    and head, LASAD reads one float32 column state, writes it and reads it back
    (`3 Dk Dv`), reads the bf16 keys and values of two grid rows and the class slot
    (`(2 w + 1)(Dk + Dv)`) and writes one slot; softmax as implemented here reads its whole
    fixed-size bf16 cache (`2 (1 + h w) D`) every token and writes one slot, and a cache
    that grew with the position would read half of it on average over the image."""
    from lasad_jax.models.config import PRESETS

    layers, heads, dim = PRESETS[preset]
    d, w, n = dim // heads, grid, 1 + grid * grid
    per_head = {"lasad": 4 * 3 * d * d + 2 * (2 * w + 2) * 2 * d,
                "softmax": 2 * 2 * (n + 1) * d}
    out = {k: layers * heads * v for k, v in per_head.items()}
    out["softmax_growing"] = layers * heads * 2 * 2 * (n // 2 + 1) * d
    return out


def decode_memory(path: pathlib.Path) -> list[dict]:
    plt = _plt()
    grids = [16, 24, 32, 48, 64]
    rows = [{"grid": g, "pixels": 16 * g, "lasad": cache_bytes("L", "lasad", g),
             "softmax": cache_bytes("L", "softmax", g),
             "per_token": token_traffic("L", g)} for g in grids]
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(11, 4.5))
    px = [r["pixels"] for r in rows]
    ax.plot(px, [r["lasad"] / 2**20 for r in rows], "o-",
            label="LASAD: w Dk Dv (float32) + (2w+1)(Dk+Dv) (bf16)")
    ax.plot(px, [r["softmax"] / 2**20 for r in rows], "o-",
            label="softmax KV cache (bf16): 2 (1 + h w) D")
    ax.set_ylabel("MiB held per image (per row of the batch)")
    ax.set_title("decoding state held", fontsize=10)
    t = [r["per_token"] for r in rows]
    bx.plot(px, [x["lasad"] / 2**20 for x in t], "o-",
            label="LASAD: 3 Dk Dv (float32) + (2w+2)(Dk+Dv) (bf16)")
    bx.plot(px, [x["softmax"] / 2**20 for x in t], "o-",
            label="softmax, fixed-size cache (this repo)")
    bx.plot(px, [x["softmax_growing"] / 2**20 for x in t], "o--",
            label="softmax, growing cache (mean over the image)")
    bx.set_ylabel("MiB of state read + written per token, per image")
    bx.set_title("state traffic per token (counted from the layouts)", fontsize=10)
    for a in (ax, bx):
        a.set_xscale("log", base=2)
        a.set_yscale("log")
        a.set_xticks(px, [f"{p}\n({g}x{g})" for p, g in zip(px, grids)])
        a.set_xlabel("image size, px (VQ-16 tokens; w = h = tokens per side)")
        a.grid(alpha=0.3, which="both")
        a.legend(fontsize=8)
    fig.suptitle("LASADGen-L decoding (24 layers, 16 heads of D = Dk = Dv = 64); numbers per "
                 "layer and head in the legends", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return rows


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--docs_dir", default=str(DOCS), help="where the PNGs go")
    parser.add_argument("--json", default=str(ROOT / "benchmarks/results/decode_memory.json"))
    parser.add_argument("--figures", nargs="+", default=["op_scaling", "decode_memory"],
                        choices=("op_scaling", "decode_memory"))
    args = parser.parse_args(argv)
    docs = pathlib.Path(args.docs_dir)
    docs.mkdir(parents=True, exist_ok=True)
    if "op_scaling" in args.figures:
        op_scaling(docs / "op_scaling.png")
        print(f"wrote {docs / 'op_scaling.png'}")
    if "decode_memory" not in args.figures:
        return []
    rows = decode_memory(docs / "decode_memory.png")
    print("| px | tokens | LASAD state MiB | softmax KV cache MiB | per token MiB: LASAD | "
          "softmax (fixed cache) | softmax (growing, mean) |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        t = r["per_token"]
        print(f"| {r['pixels']} | {r['grid']}x{r['grid']} | {r['lasad'] / 2**20:.1f} | "
              f"{r['softmax'] / 2**20:.1f} | {t['lasad'] / 2**20:.2f} | "
              f"{t['softmax'] / 2**20:.2f} | {t['softmax_growing'] / 2**20:.2f} |")
    pathlib.Path(args.json).write_text(json.dumps(rows, indent=1))
    print(f"wrote {docs / 'decode_memory.png'}, {args.json}")
    return rows


if __name__ == "__main__":
    main()
