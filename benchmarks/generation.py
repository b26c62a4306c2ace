"""Time per generated token by position, and decoding memory, of the whole LASADGen model.

    python benchmarks/generation.py       # tiny and B, 16x16 and 32x32: ~7 min on 2 CPU cores
    python benchmarks/generation.py --presets B --grids 32 --mixers lasad --passes 3

LASAD's promise is that sampling costs the same for every token: its decoding state has
a fixed size, so the step for the last token of an image should take as long as the step
for the first. This script checks that on the real model (embedding, every block, the
output head), not on the operator alone as `decode_step.py` does.

Method. The model is split with `nnx.split` and one pure function
`step(params, cache, token) -> (logits, cache)` (token embedding + `decode_step`) is
jitted with the cache donated, as a sampler would run it; slot 0, the class slot, goes
through a second program of the same shape (`class_embed` instead of `token_embed`).
Every position of one image is then fed one call at a time and each call is timed to
`jax.block_until_ready`, so the series shows the cost at each position, which the
one-`lax.scan` sampler (`lasad_jax.sampling.generate`) cannot. The pass is repeated
`--passes` times and the per-position median is kept: a shared CPU adds one-off stalls,
and these vanish in a median of a few passes. Tokens are random ids (the cost does not
depend on their values); no sampling is timed in the per-position series.

Reported per preset, grid and mixer: mean ms per token over the first and the last
quarter of the image-token steps and their ratio (last / first), the mean over all steps,
the total per image (sum of the per-position medians), the whole-image time of the jitted
`generate` scan as a cross-check (cfg scale 1, same batch; `--skip_scan` to leave it out),
the decoding state's size (bytes of every array in the cache pytree), and XLA's memory
figure for the compiled token step (`Compiled.memory_analysis()`).

The quarters leave out slot 0: it runs the other program (the class embedding). Every
LASAD step does the same work wherever it lies in the grid (docs/decoding.md), so the
series should be flat; a design with a per-row pass would show a spike at each row start.
`benchmarks/sampling.py` times the same question inside the one-scan sampler, by quarter.

Read the softmax rows with care. This repository's softmax decode step writes into a
KV cache of fixed size (`1 + rows * cols` slots) and attends over all of it with a mask,
so its cost per token is proportional to the cache length, i.e. to the image size, and
does not grow with the position: its last/first ratio is ~1 by construction and says
nothing about a growing-cache implementation. Its cost at the end of an image is the
honest figure to compare with (attention over every earlier token); compare the grids
(the 32x32 cache is 4x the 16x16 one) to see softmax's growth.

Memory. `peak` is arguments + outputs + temporaries - aliased bytes: the donated cache's
output reuses the input's buffers, so it is counted once. Arguments include the weights,
listed separately, which dominate at batch 1. XLA's own `peak_memory_in_bytes` is kept in
the JSON when this JAX version reports it.

Prints a markdown table, whether LASAD meets the project's target (last/first <= 1.2),
writes JSON (with the per-position series) to `--out` and a PNG plot to `--plot`
(drawn with Pillow; matplotlib is not a dependency).
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import sys
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
from flax import nnx

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.dirname(__file__))
from lasad_jax.models import LASADGen  # noqa: E402
from lasad_jax.models.presets import preset_config  # noqa: E402
from lasad_jax.sampling import generate  # noqa: E402
from common import run_info, write_json  # noqa: E402

TARGET_RATIO = 1.2  # the project's bound on LASAD's last/first per-token time
MEMORY_FIELDS = ("argument_size_in_bytes", "output_size_in_bytes", "temp_size_in_bytes",
                 "alias_size_in_bytes", "peak_memory_in_bytes")


def tree_bytes(tree: Any) -> int:
    """Bytes of every array in a pytree (the decoding cache, the weights)."""
    return int(sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(tree)))


def memory_figures(compiled) -> dict[str, int | None]:
    """XLA's memory figures for a compiled program, with the fields this JAX has.

    `peak_bytes` counts aliased outputs once: with the cache donated, the new cache is
    written into the old one's buffers.
    """
    try:
        stats = compiled.memory_analysis()
    except Exception:  # a backend without memory analysis
        stats = None
    figures = {f: (int(getattr(stats, f)) if hasattr(stats, f) else None) for f in MEMORY_FIELDS}
    parts = [figures[f] for f in MEMORY_FIELDS[:3]]
    if any(p is None for p in parts):
        figures["peak_bytes"] = None
    else:
        figures["peak_bytes"] = sum(parts) - (figures["alias_size_in_bytes"] or 0)
    return figures


def memory_row(compiled, usable: float) -> dict:
    """The program's peak device memory (arguments + outputs + temporaries, aliased
    outputs once: `memory_figures`) and whether it fits in `usable` bytes. The two
    compile-only benchmarks share it: for benchmarks/gpu_aot.py `usable` is the share of
    the GPU's memory that JAX's allocator takes (device_check.sh sets it), for
    benchmarks/tpu_aot.py a TPU chip's HBM."""
    figures = memory_figures(compiled)
    peak = figures["peak_bytes"]
    return dict(temp_bytes=figures["temp_size_in_bytes"], peak_bytes=peak,
                fits=None if peak is None else peak <= usable)


def build_steps(model: LASADGen, batch: int) -> tuple[Callable, Callable, Any, dict]:
    """Compiles the class-slot and the token step of `model` as pure functions of
    (params, cache, ids), the cache donated; returns them, the params and the token
    step's memory figures."""
    graphdef, params = nnx.split(model)

    def class_step(params, cache, labels):
        m = nnx.merge(graphdef, params)
        return m.decode_step(cache, m.class_embed(labels))

    def token_step(params, cache, tokens):
        m = nnx.merge(graphdef, params)
        return m.decode_step(cache, m.token_embed(tokens))

    ids = jnp.zeros((batch,), jnp.int32)
    cache = model.init_cache(batch)
    first = jax.jit(class_step, donate_argnums=1).lower(params, cache, ids).compile()
    step = jax.jit(token_step, donate_argnums=1).lower(params, cache, ids).compile()
    return first, step, params, memory_figures(step)


def one_pass(model: LASADGen, first: Callable, step: Callable, params: Any,
             labels: jax.Array, tokens: list[jax.Array]) -> list[float]:
    """Decodes one image slot by slot; returns the ms of each of its `len(tokens) + 1` steps.

    The garbage collector is paused so that its sweeps do not land on a timed step.
    """
    cache = model.init_cache(labels.shape[0])
    jax.block_until_ready(cache)
    times = []
    gc.disable()
    try:
        t0 = time.perf_counter()
        cache = jax.block_until_ready(first(params, cache, labels))[1]
        times.append(time.perf_counter() - t0)
        for tok in tokens:
            t0 = time.perf_counter()
            cache = jax.block_until_ready(step(params, cache, tok))[1]
            times.append(time.perf_counter() - t0)
    finally:
        gc.enable()
    return [1e3 * t for t in times]


def scan_ms(model: LASADGen, labels: jax.Array) -> float:
    """Wall time of one whole image through the jitted sampler (after a compiling run)."""
    key = jax.random.key(1)
    jax.block_until_ready(generate(model, labels, key, cfg_scale=1.0))
    t0 = time.perf_counter()
    jax.block_until_ready(generate(model, labels, key, cfg_scale=1.0))
    return 1e3 * (time.perf_counter() - t0)


def summarise(series: list[float]) -> dict[str, float]:
    """Quarter means over the image-token steps (slot 0 left out, see the docstring)."""
    tokens = series[1:]
    quarter = max(1, len(tokens) // 4)
    first = statistics.fmean(tokens[:quarter])
    last = statistics.fmean(tokens[-quarter:])
    return dict(first_quarter_ms=first, last_quarter_ms=last, ratio_last_over_first=last / first,
                mean_ms=statistics.fmean(series), ms_per_image=sum(series),
                quarter_steps=quarter)


def measure(preset: str, grid: int, mixer: str, args) -> dict:
    overrides = dict(grid=(grid, grid), vocab_size=args.vocab, num_classes=args.classes)
    for flag, field in (("layers", "num_layers"), ("heads", "num_heads"), ("dim", "dim")):
        if getattr(args, flag) is not None:
            overrides[field] = getattr(args, flag)
    cfg = preset_config(preset, mixer, **overrides)
    model = LASADGen(cfg, rngs=nnx.Rngs(0))
    t0 = time.perf_counter()
    first, step, params, memory = build_steps(model, args.batch)
    compile_s = time.perf_counter() - t0

    key_labels, key_tokens = jax.random.split(jax.random.key(0))
    labels = jax.random.randint(key_labels, (args.batch,), 0, cfg.num_classes)
    ids = jax.random.randint(key_tokens, (cfg.num_tokens - 1, args.batch), 0, cfg.vocab_size)
    tokens = [ids[i] for i in range(cfg.num_tokens - 1)]  # sliced now, not in the timed loop
    jax.block_until_ready(tokens)
    # Warm-up: both programs and the first row once, on a throwaway cache.
    one_pass(model, first, step, params, labels, tokens[:grid])

    passes = [one_pass(model, first, step, params, labels, tokens) for _ in range(args.passes)]
    series = [statistics.median(p[i] for p in passes) for i in range(cfg.num_tokens)]
    row = dict(preset=preset, grid=grid, mixer=mixer, layers=cfg.num_layers,
               heads=cfg.num_heads, dim=cfg.dim, batch=args.batch, steps=cfg.num_tokens,
               passes=args.passes, **summarise(series),
               scan_ms_per_image=None if args.skip_scan else scan_ms(model, labels),
               state_bytes=tree_bytes(model.init_cache(args.batch)),
               weight_bytes=tree_bytes(params), compile_s=compile_s, **memory,
               series_ms=[round(t, 4) for t in series])
    return row


def fmt_mib(n: int | None) -> str:
    return "?" if n is None else f"{n / 2**20:,.1f}"


def markdown_table(rows: list[dict]) -> str:
    lines = ["| preset | grid | mixer | first 1/4 ms/token | last 1/4 ms/token | last/first "
             "| mean ms/token | ms/image | scan ms/image | state MiB | step peak MiB "
             "| weights MiB |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        scan = "-" if r["scan_ms_per_image"] is None else f"{r['scan_ms_per_image']:,.0f}"
        lines.append(
            f"| {r['preset']} | {r['grid']}x{r['grid']} | {r['mixer']} "
            f"| {r['first_quarter_ms']:.2f} | {r['last_quarter_ms']:.2f} "
            f"| {r['ratio_last_over_first']:.3f} | {r['mean_ms']:.2f} "
            f"| {r['ms_per_image']:,.0f} | {scan} | {fmt_mib(r['state_bytes'])} "
            f"| {fmt_mib(r['peak_bytes'])} | {fmt_mib(r['weight_bytes'])} |")
    return "\n".join(lines)


def verdict(rows: list[dict]) -> dict:
    lasad = [r for r in rows if r["mixer"] == "lasad"]
    if not lasad:
        return dict(target=TARGET_RATIO, lasad_max_ratio=None, met=None,
                    text="no lasad rows: the 1.2 target was not checked")
    worst = max(lasad, key=lambda r: r["ratio_last_over_first"])
    met = worst["ratio_last_over_first"] <= TARGET_RATIO
    text = (f"LASAD last/first per-token ratio <= {TARGET_RATIO}: "
            f"{'MET' if met else 'NOT MET'} (worst {worst['ratio_last_over_first']:.3f}, "
            f"{worst['preset']} {worst['grid']}x{worst['grid']})")
    return dict(target=TARGET_RATIO, lasad_max_ratio=worst["ratio_last_over_first"], met=met,
                text=text)


COLORS = {"lasad": (31, 119, 180), "softmax": (214, 39, 40), "lasad_row": (44, 160, 44),
          "linear_1d": (148, 103, 189), "linear": (140, 86, 75)}


def plot(rows: list[dict], path: str) -> bool:
    """One panel per (preset, grid), ms per step against position, one line per mixer.

    Drawn with Pillow polylines (a project dependency); returns False if Pillow is absent.
    """
    try:
        from PIL import Image, ImageDraw, ImageFont
    except ImportError:
        return False
    panels: dict[tuple, list[dict]] = {}
    for r in rows:
        panels.setdefault((r["preset"], r["grid"]), []).append(r)
    cols = min(2, len(panels))
    nrows = -(-len(panels) // cols)
    pw, ph, ml, mr, mt, mb = 560, 340, 70, 20, 40, 45
    img = Image.new("RGB", (cols * pw, nrows * ph), "white")
    draw = ImageDraw.Draw(img)
    try:
        font = ImageFont.load_default(size=13)
    except TypeError:  # Pillow < 10.1 has no sized default font
        font = ImageFont.load_default()
    for n, ((preset, grid), group) in enumerate(panels.items()):
        x0, y0 = (n % cols) * pw + ml, (n // cols) * ph + mt
        w, h = pw - ml - mr, ph - mt - mb
        steps = max(len(r["series_ms"]) for r in group)
        top = 1.05 * max(max(r["series_ms"]) for r in group)
        draw.rectangle([x0, y0, x0 + w, y0 + h], outline="black")
        for frac in (0.0, 0.25, 0.5, 0.75, 1.0):
            y = y0 + h - frac * h
            draw.line([x0 - 4, y, x0, y], fill="black")
            draw.text((x0 - 8, y), f"{frac * top:.3g}", fill="black", font=font, anchor="rm")
            x = x0 + frac * w
            draw.line([x, y0 + h, x, y0 + h + 4], fill="black")
            draw.text((x, y0 + h + 6), f"{round(frac * (steps - 1))}", fill="black", font=font,
                      anchor="ma")
        draw.text((x0 + w / 2, y0 - 8), f"{preset}, {grid}x{grid}: ms per step by position",
                  fill="black", font=font, anchor="md")
        draw.text((x0 + w / 2, y0 + h + 24), "slot (0 = class slot)", fill="black", font=font,
                  anchor="ma")
        for k, r in enumerate(group):
            s = r["series_ms"]
            pts = [(x0 + i * w / max(1, len(s) - 1), y0 + h - v / top * h) for i, v in enumerate(s)]
            color = COLORS.get(r["mixer"], (0, 0, 0))
            draw.line(pts, fill=color, width=1)
            draw.text((x0 + 8, y0 + 8 + 16 * k), r["mixer"], fill=color, font=font)
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    img.save(path)
    return True


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--presets", nargs="+", default=["tiny", "B"])
    p.add_argument("--grids", type=int, nargs="+", default=[16, 32], help="square grid sides")
    p.add_argument("--mixers", nargs="+", default=["lasad", "softmax"])
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--passes", type=int, default=5,
                   help="full passes per model; the per-position median is kept")
    p.add_argument("--vocab", type=int, default=16384)
    p.add_argument("--classes", type=int, default=1000)
    p.add_argument("--layers", type=int, default=None, help="override the preset (tests)")
    p.add_argument("--heads", type=int, default=None, help="override the preset (tests)")
    p.add_argument("--dim", type=int, default=None, help="override the preset (tests)")
    p.add_argument("--skip_scan", action="store_true",
                   help="do not time the whole-image `generate` scan")
    p.add_argument("--out", default="benchmarks/results/generation_cpu.json")
    p.add_argument("--plot", default=None, help="PNG path (default: --out with .png)")
    args = p.parse_args(argv)
    if args.passes < 1 or args.batch < 1:
        p.error("--passes and --batch must be >= 1")

    info = run_info(batch=args.batch, passes=args.passes, vocab=args.vocab,
                    classes=args.classes, dtype="float32",
                    overrides={k: getattr(args, k) for k in ("layers", "heads", "dim")
                               if getattr(args, k) is not None})
    print(info)
    rows = []
    for preset in args.presets:
        for grid in args.grids:
            for mixer in args.mixers:
                t0 = time.perf_counter()
                r = measure(preset, grid, mixer, args)
                rows.append(r)
                print(f"{preset} {grid}x{grid} {mixer}: first {r['first_quarter_ms']:.2f} "
                      f"last {r['last_quarter_ms']:.2f} ms/token, ratio "
                      f"{r['ratio_last_over_first']:.3f}, {time.perf_counter() - t0:.0f} s",
                      flush=True)
    print(markdown_table(rows))
    v = verdict(rows)
    print(v["text"])
    if "softmax" in args.mixers:
        print("note: the softmax step attends over its whole fixed-size KV cache with a mask, "
              "so its cost follows the image size, not the position (ratio ~1 by construction).")
    plot_path = args.plot or os.path.splitext(args.out)[0] + ".png"
    plotted = plot(rows, plot_path)
    print(f"wrote {plot_path}" if plotted else "Pillow is not installed: no plot written")
    result = dict(info=info, verdict=v, plot=plot_path if plotted else None, rows=rows)
    write_json(args.out, result)
    return result


if __name__ == "__main__":
    main()
