"""Sampling speed of LASADGen against its softmax twin: images/s of `generate`, time per
token by position, decoding memory, compile time, and the HLO check of each program.

    python benchmarks/sampling.py                       # GPU: B and L, 256/384/512 px
    python benchmarks/sampling.py --smoke               # CPU, tiny models (CI, ~1 min)
    python benchmarks/sampling.py --presets tiny --grids 16 32 --batch 4 --dtype float32

Per row (preset, grid, mixer, state dtype, decoding step), with classifier-free guidance
(`--cfg_scale` 2.0 doubles the rows the model runs: `--batch` 64 images are 128 rows),
compute in `--dtype`:
* `compile_s`: lowering and compiling `lasad_jax.sampling.generate`'s program (the
  first call's extra cost); `ms_per_batch` and `images_per_s`: the compiled program run
  `--repeats` times after one warm-up, median; sampling (top-k 0, top-p 1) included.
* `first_quarter_ms_per_token` / `last_quarter_ms_per_token` (mixers in `--quarters`,
  the first row of each at a preset and grid: the ratio is a property of the size, and
  each measurement compiles two more programs): the same sampling loop
  (`generate.decode_loop`) compiled for a quarter of the image, run four times in a row
  on one cache, each quarter timed on its own (median over `--quarter_repeats` passes).
  A step that costs the same everywhere gives a ratio of 1.
* `state_bytes`: the decoding cache `generate` carries (every array), and
  `kv_cache_bytes`: the softmax twin's KV cache for the same batch, from `eval_shape`.
  `--state_dtypes float32 bfloat16` also runs the linear mixers with their recurrent
  states stored in bfloat16 (`model.decode_state_dtype`: half the state bytes a token
  moves), and `--decode_impls xla pallas` runs `lasad` with each decoding step
  (`model.decode_impl`; "pallas": the fused kernel, GPU). Every step of the first dtype
  runs with softmax grid by grid; the other dtypes' rows come after all of those.
* `profile` (rows at `--profile_grids`): one more call under JAX's profiler, once every
  row is timed (a time limit cuts profiles, not rows): the device's busy time against the
  call's wall time (a sampled token is
  a fraction of a millisecond: are launches or kernels the cost?) and the kernels the
  time went to (`benchmarks/device_profile.py`).
* `hlo_problems` (with `--hlo_check`): `lasad_jax.sampling.hlo_check` on the compiled
  program; any problem makes the script exit 1 after the table. Not on the Pallas
  interpreter's program (CPU), which is not the one a GPU runs.

* `status`: "ok"; "mismatch: ..." for a fused step (`--decode_impls pallas`) that
  disagrees with the XLA step on random inputs at the model's head sizes
  (`check_fused_step`, before the first such row of each head size and state dtype: the
  zero output head below would hide a wrong kernel), not timed; "failed: ..." for a row
  that raised (a refused compile, out of memory). The rows after it still run.

Rows run grid by grid, presets inside, softmax first at each, so a time limit cuts the
least important last and leaves whole comparisons. Each row is printed and the JSON
(`--out`) rewritten as soon as its images/s are known, again after its quarters. At the end the
LASAD / softmax speedups are checked against the targets (>= 1.0x at 16x16 tokens, 1.5x
at 24x24, 2x at 32x32; LASAD last/first quarter <= 1.1). Weights are a fresh init (the
output head is zero, so sampling draws uniformly: the cost does not depend on it).
Imports only jax, flax, numpy and the model: runs on the bare GPU image.
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics
import sys
import time
import traceback

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.dirname(__file__))
from lasad_jax.models import LASADGen, ModelConfig  # noqa: E402
from lasad_jax.models.config import PRESETS  # noqa: E402
from lasad_jax.ops import (  # noqa: E402
    lasad_decode_init, lasad_decode_step, select_decode_impl)
from lasad_jax.ops.platform import target_platform  # noqa: E402
from lasad_jax.sampling.generate import (  # noqa: E402
    _generate, cache_batch_axes, cast_weights, decode_loop, start)
from lasad_jax.sampling.hlo_check import guarded_arrays, loop_problems  # noqa: E402
from common import run_info, write_json  # noqa: E402
from device_profile import format_profile, profile_call  # noqa: E402

# LASAD images/s over softmax's, by grid side (VQ-16: 256, 384, 512 px); per-token ratio.
TARGET_SPEEDUP = {16: 1.0, 24: 1.5, 32: 2.0}
TARGET_QUARTER_RATIO = 1.1
SMOKE = ["--presets", "tiny", "--layers", "2", "--heads", "2", "--dim", "32", "--vocab", "64",
         "--classes", "4", "--grids", "4", "6", "--batch", "2", "--repeats", "1",
         "--dtype", "float32", "--hlo_check"]


class MismatchError(Exception):
    """A row whose program computes the wrong thing: not timed."""


def tree_bytes(tree) -> int:
    return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(tree))


def build(args, preset: str, grid: int, mixer: str, state_dtype: str = "float32",
          decode_impl: str = "auto") -> LASADGen:
    layers, heads, dim = PRESETS[preset]
    cfg = ModelConfig(vocab_size=args.vocab, num_classes=args.classes, grid=(grid, grid),
                      num_layers=args.layers or layers, num_heads=args.heads or heads,
                      dim=args.dim or dim, mixer=mixer, dtype=args.dtype,
                      decode_state_dtype=state_dtype,
                      decode_impl=decode_impl if mixer == "lasad" else "auto")
    return LASADGen(cfg, rngs=nnx.Rngs(0))


@functools.partial(jax.jit, static_argnames=("graphdef", "cfg_scale"), donate_argnums=(2,))
def _quarter(graphdef, params, cache, logits, keys, *, cfg_scale):
    model = cast_weights(nnx.merge(graphdef, params))
    cache, logits, _ = decode_loop(model, cache, logits, keys, cfg_scale=cfg_scale,
                                   temperature=1.0, top_k=0, top_p=1.0)
    return cache, logits


@functools.partial(jax.jit, static_argnames=("graphdef", "cfg_scale"))
def _start(graphdef, params, labels, *, cfg_scale):
    return start(nnx.merge(graphdef, params), labels, cfg_scale=cfg_scale)


def quarter_times(model, labels, cfg_scale: float, repeats: int) -> list[float]:
    """ms per token of each quarter of the image-token steps, median over `repeats`
    passes after a warm-up pass. The steps left over by the division (at most 3, at
    the very end) are not run."""
    graphdef, params = nnx.split(model)
    span = (model.cfg.num_tokens - 1) // 4
    keys = jax.random.split(jax.random.key(1), 4 * span).reshape(4, span)
    passes = []
    for _ in range(repeats + 1):
        cache, logits = _start(graphdef, params, labels, cfg_scale=cfg_scale)
        jax.block_until_ready(logits)
        times = []
        for quarter in range(4):
            t0 = time.perf_counter()
            cache, logits = _quarter(graphdef, params, cache, logits, keys[quarter],
                                     cfg_scale=cfg_scale)
            jax.block_until_ready(logits)
            times.append(1e3 * (time.perf_counter() - t0) / span)
        passes.append(times)
        del cache
    return [statistics.median(p[q] for p in passes[1:]) for q in range(4)]


# How far the fused step may be from the XLA step, by column-state dtype: float32 at the
# highest matmul precision rounds to ~1e-6; bfloat16 states round each column update,
# differently in the two (1.3e-3 to 1.8e-3 on CPU at 4 and 16 columns). A wrong kernel is
# off by the size of the output.
FUSED_TOL = {"float32": 1e-3, "bfloat16": 2e-2}
FUSED_CHECKED: dict[tuple, float] = {}  # (head_dim, state dtype) -> check_fused_step's


def check_fused_step(cfg: ModelConfig, state_dtype: str) -> float:
    """Largest difference, relative to the largest output, between the fused Pallas
    decoding step and the XLA step fed the same random slots (the prefix and two grid
    rows) at the model's head sizes, width, head norm and state dtype; float32 inputs at
    the highest matmul precision. The model's zero-initialised output head would hide a
    wrong kernel from `generate` (its logits are 0 whatever the cache holds), so a fused
    row is timed only after this passes: its speed decides `ops.DECODE_AUTO_TABLE`."""
    b, h, d, width = 2, cfg.num_heads, cfg.head_dim, cfg.grid[1]
    slots = cfg.num_prefix + 2 * width
    rng = np.random.default_rng(0)
    q, k, v = (jnp.asarray(rng.normal(size=(slots, b, h, d)), jnp.float32) for _ in range(3))
    scale = jnp.asarray(rng.uniform(0.5, 2.0, size=(b, h, d)), jnp.float32)
    decays = dict(row_decay=jnp.full((h,), 0.9), col_decay=jnp.full((h,), 0.7))
    outs = []
    for impl in ("xla", "pallas"):
        state = lasad_decode_init(b, h, d, d, width, jnp.dtype(state_dtype),
                                  prefix_slots=cfg.num_prefix, kv_dtype=jnp.float32)

        def body(state, x, impl=impl):
            o, state = lasad_decode_step(state, *x, num_prefix=cfg.num_prefix, impl=impl,
                                         norm_eps=cfg.norm_eps, out_scale=scale, **decays)
            return state, o

        with jax.default_matmul_precision("highest"):
            outs.append(np.asarray(jax.jit(lambda s, q, k, v: jax.lax.scan(
                body, s, (q, k, v))[1])(state, q, k, v)))
    return float(np.max(np.abs(outs[1] - outs[0])) / max(np.max(np.abs(outs[0])), 1e-30))


def failed_row(preset: str, grid: int, mixer: str, state_dtype: str, decode_impl: str,
               status: str) -> dict:
    """A row that was not timed, with why: the table goes on to the next."""
    return dict(preset=preset, grid=grid, pixels=16 * grid, mixer=mixer,
                state_dtype=state_dtype, decode_impl=decode_impl, status=status)


def measure(args, preset: str, grid: int, mixer: str, state_dtype: str,
            decode_impl: str) -> dict:
    if decode_impl == "auto":  # the row names the step that ran
        decode_impl = select_decode_impl(target_platform())
    model = build(args, preset, grid, mixer, state_dtype, decode_impl)
    fused_err = None
    if model.cfg.decode_impl == "pallas":
        # Once per head size and state dtype: the kernel's code depends on those, while
        # heads and width only set its grid and loop length (the interpreted tests cover
        # widths); each check compiles two programs, device time the rows need.
        key = (model.cfg.head_dim, state_dtype)
        if key not in FUSED_CHECKED:
            FUSED_CHECKED[key] = check_fused_step(model.cfg, state_dtype)
        fused_err = FUSED_CHECKED[key]
        if not fused_err <= FUSED_TOL[state_dtype]:
            raise MismatchError(f"mismatch: the fused step is {fused_err:.2e} from the XLA "
                                "step")
    graphdef, params = nnx.split(model)
    labels = jnp.arange(args.batch, dtype=jnp.int32) % args.classes
    rows = args.batch * (2 if args.cfg_scale != 1.0 else 1)
    sampling = dict(cfg_scale=args.cfg_scale, temperature=1.0, top_k=0, top_p=1.0)
    key = jax.random.key(0)

    t0 = time.perf_counter()
    compiled = _generate.lower(graphdef, params, labels, key, **sampling).compile()
    compile_s = time.perf_counter() - t0
    cache = jax.eval_shape(lambda: model.init_cache(rows))
    twin = nnx.eval_shape(lambda: build(args, preset, grid, "softmax"))  # no weights made
    row = dict(preset=preset, grid=grid, pixels=16 * grid, mixer=mixer,
               state_dtype=state_dtype, decode_impl=model.cfg.decode_impl, batch=args.batch,
               rows=rows, layers=model.cfg.num_layers, heads=model.cfg.num_heads,
               dim=model.cfg.dim, compile_s=compile_s, state_bytes=tree_bytes(cache),
               kv_cache_bytes=tree_bytes(jax.eval_shape(lambda: twin.init_cache(rows))),
               weight_bytes=tree_bytes(params), status="ok")
    if fused_err is not None:
        row["fused_step_err"] = fused_err
    # Pallas' CPU interpreter runs a kernel's grid as an XLA loop that carries the whole
    # aliased state, so that program copies it; the GPU one does not (gpu_aot.py checks it).
    interpreted = model.cfg.decode_impl == "pallas" and target_platform() == "cpu"
    if args.hlo_check and not interpreted:
        column = rows * model.cfg.num_heads * model.cfg.head_dim ** 2
        axes = cache_batch_axes(model.init_cache, rows)
        row["hlo_problems"] = loop_problems(compiled.as_text(),
                                            guarded_arrays(cache, axes, column), movable=column)

    jax.block_until_ready(compiled(params, labels, key))  # warm-up
    times = []
    for i in range(args.repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(compiled(params, labels, jax.random.key(i + 1)))
        times.append(time.perf_counter() - t0)
    seconds = statistics.median(times)
    row.update(ms_per_batch=1e3 * seconds, images_per_s=args.batch / seconds,
               ms_per_token=1e3 * seconds / model.cfg.num_tokens)

    def profile() -> dict:  # one more call of the same program, for the caller to run
        return profile_call(lambda: compiled(params, labels, key), compiled.as_text())

    return row, model, labels, profile


def add_quarters(row: dict, model: LASADGen, labels: jax.Array, args) -> None:
    q = quarter_times(model, labels, args.cfg_scale, args.quarter_repeats)
    row.update(quarter_ms_per_token=q, first_quarter_ms_per_token=q[0],
               last_quarter_ms_per_token=q[-1], quarter_ratio=q[-1] / q[0])


def verdict(rows: list[dict]) -> list[dict]:
    """LASAD / softmax images/s for every (preset, grid) with both, against the targets."""
    out = []
    for r in rows:
        if r["mixer"] != "lasad" or "images_per_s" not in r:
            continue
        twin = next((s for s in rows if s["mixer"] == "softmax" and s["preset"] == r["preset"]
                     and s["grid"] == r["grid"] and "images_per_s" in s), None)
        # The size's last/first quarter ratio, measured on its first LASAD row.
        ratio = next((s["quarter_ratio"] for s in rows if s["mixer"] == "lasad"
                      and s["preset"] == r["preset"] and s["grid"] == r["grid"]
                      and "quarter_ratio" in s), None)
        entry = dict(preset=r["preset"], grid=r["grid"], state_dtype=r["state_dtype"],
                     decode_impl=r.get("decode_impl"), ms_per_token=r.get("ms_per_token"),
                     quarter_ratio=ratio)
        if twin:
            entry["speedup"] = r["images_per_s"] / twin["images_per_s"]
            target = TARGET_SPEEDUP.get(r["grid"])
            entry["target"] = target
            if target is not None:  # None: the quarters were not measured (time limit)
                entry["met"] = (None if ratio is None else
                                entry["speedup"] >= target and ratio <= TARGET_QUARTER_RATIO)
        out.append(entry)
    return out


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--presets", nargs="+", default=["L", "B"], choices=list(PRESETS))
    p.add_argument("--grids", type=int, nargs="+", default=[16, 32, 24],
                   help="tokens per side (VQ-16: 16 = 256 px, 24 = 384 px, 32 = 512 px)")
    p.add_argument("--mixers", nargs="+", default=["lasad", "softmax"])
    p.add_argument("--state_dtypes", nargs="+", default=["float32"],
                   choices=("float32", "bfloat16"),
                   help="storage of the linear mixers' decoding states, a row per dtype")
    p.add_argument("--decode_impls", nargs="+", default=["auto"],
                   choices=("auto", "xla", "pallas"),
                   help="the lasad decoding step's column update (model.decode_impl), a row "
                        "per choice")
    p.add_argument("--quarters", nargs="*", default=["lasad"],
                   help="mixers whose time per token is also measured by quarter")
    p.add_argument("--batch", type=int, default=64, help="images per call (x2 rows with CFG)")
    p.add_argument("--cfg_scale", type=float, default=2.0)
    p.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float32"))
    p.add_argument("--layers", type=int, default=0, help="override the preset's (0: keep)")
    p.add_argument("--heads", type=int, default=0)
    p.add_argument("--dim", type=int, default=0)
    p.add_argument("--vocab", type=int, default=16384)
    p.add_argument("--classes", type=int, default=1000)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--quarter_repeats", type=int, default=1,
                   help="timed passes of the quarter measurement (after a warm-up pass)")
    p.add_argument("--hlo_check", action="store_true",
                   help="check each compiled program for copies of the decoding cache")
    p.add_argument("--profile_grids", type=int, nargs="*", default=[],
                   help="rows at these grids also run once under JAX's profiler: where the "
                        "time goes (benchmarks/device_profile.py)")
    p.add_argument("--smoke", action="store_true", help="tiny CPU run: " + " ".join(SMOKE))
    p.add_argument("--out", default=None, help="JSON path (default: benchmarks/results/"
                                               "sampling_<backend>.json)")
    argv = sys.argv[1:] if argv is None else argv
    args = p.parse_args(argv)
    if args.smoke:  # the smoke settings, then anything given on the command line
        args = p.parse_args(SMOKE + argv)
    stray = sorted(set(args.profile_grids) - set(args.grids))
    if stray:
        raise SystemExit(f"--profile_grids {stray} are not among --grids {args.grids}: no "
                         "row would be profiled there")
    out = args.out or f"benchmarks/results/sampling_{jax.default_backend()}.json"
    info = run_info(batch=args.batch, cfg_scale=args.cfg_scale, dtype=args.dtype,
                    repeats=args.repeats, smoke=args.smoke)
    rows: list[dict] = []

    def save(complete: bool = False) -> dict:
        result = dict(info=info, complete=complete, rows=rows, verdict=verdict(rows))
        write_json(out, result, quiet=not complete)
        return result

    print("| preset | tokens | mixer | state, step | batch | compile s | ms/batch | images/s | "
          "first 1/4 ms/token | last 1/4 | last/first | state MiB | KV cache MiB | HLO |",
          flush=True)
    print("|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|", flush=True)
    # First every grid and preset with the first state dtype, every decoding step and
    # softmax (the comparisons the targets are about), then the linear mixers again with
    # each other state dtype: a time limit cuts the extra rows first.
    mixers = sorted(args.mixers, key=lambda m: m != "softmax")  # softmax first
    passes = [[(m, d, i) for m in mixers
               for i in (["auto"] if m == "softmax" else args.decode_impls)
               if n == 0 or m != "softmax"]
              for n, d in enumerate(args.state_dtypes)]
    cases = [(grid, preset, *run) for runs in passes for grid in args.grids
             for preset in args.presets for run in runs]
    quartered = set()
    # (row, profile): run once the loop leaves the profiled grids (the 256 px rows come
    # first, and the stage's limit falls among the last rows, which the profiles would
    # never outlast if they waited for them), and at the end.
    profiles = []

    def run_profiles() -> None:
        for row, profile in profiles:
            state = "" if row["mixer"] == "softmax" else f", {row['decode_impl']} step"
            print(f"profile: {row['preset']} {row['grid']}x{row['grid']} {row['mixer']}{state}",
                  flush=True)
            row["profile"] = profile()
            save()
            print("\n".join(format_profile(row["profile"])), flush=True)
        profiles.clear()

    for grid, preset, mixer, state_dtype, decode_impl in cases:
        if profiles and grid not in args.profile_grids:
            run_profiles()
        try:
            row, model, labels, profile = measure(args, preset, grid, mixer, state_dtype,
                                                  decode_impl)
        except Exception as e:  # a refused compile, out of memory, a wrong fused step
            status = (str(e) if isinstance(e, MismatchError)
                      else f"failed: {type(e).__name__}: {str(e)[:200]}")
            if not isinstance(e, MismatchError):
                traceback.print_exc(limit=-6)  # what a fix starts from
            rows.append(failed_row(preset, grid, mixer, state_dtype, decode_impl, status))
            save()
            print(f"| {preset} | {grid}x{grid} | {mixer} | {state_dtype} {decode_impl} | "
                  f"{status} |", flush=True)
            continue
        rows.append(row)
        save()  # images/s kept even if the limit falls during the quarters
        if grid in args.profile_grids:
            profiles.append((row, profile))
        del profile
        if mixer in args.quarters and (preset, grid, mixer) not in quartered:
            quartered.add((preset, grid, mixer))
            add_quarters(row, model, labels, args)
            save()
        del model
        q = [f"{row[k]:.3f}" if k in row else "" for k in
             ("first_quarter_ms_per_token", "last_quarter_ms_per_token", "quarter_ratio")]
        hlo = ("ok" if not row["hlo_problems"] else f"{len(row['hlo_problems'])} "
               "problems") if "hlo_problems" in row else ""
        if args.hlo_check and "hlo_problems" not in row:
            hlo = "interpreted, not checked"
        state = "" if mixer == "softmax" else f"{state_dtype} {row['decode_impl']}"
        print(f"| {preset} | {grid}x{grid} | {mixer} | {state} | {args.batch} | "
              f"{row['compile_s']:.1f} | {row['ms_per_batch']:.1f} | "
              f"{row['images_per_s']:.2f} | {' | '.join(q)} | "
              f"{row['state_bytes'] / 2**20:.1f} | {row['kv_cache_bytes'] / 2**20:.1f} | "
              f"{hlo} |", flush=True)
        for problem in row.get("hlo_problems", []):
            print(f"    HLO: {problem}", flush=True)
    run_profiles()
    result = save(complete=True)
    for v in result["verdict"]:
        speed = f"{v['speedup']:.2f}x softmax" if "speedup" in v else "no softmax row"
        met = {True: "met", False: "missed", None: "quarters not measured"}[v.get("met")]
        target = (f" (target {v['target']}x, ratio <= {TARGET_QUARTER_RATIO}: {met})"
                  if v.get("target") else "")
        ratio = f", last/first {v['quarter_ratio']:.3f}" if v.get("quarter_ratio") else ""
        print(f"{v['preset']} {v['grid']}x{v['grid']}: LASAD ({v['state_dtype']} states, "
              f"{v['decode_impl']} step) "
              f"{speed}{ratio}{target}")
    if any(r.get("hlo_problems") for r in rows):
        raise SystemExit("the HLO check found copies of the decoding cache (rows above)")
    return result


if __name__ == "__main__":
    main()
