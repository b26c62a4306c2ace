"""One jitted training step of LASADGen, LASAD against softmax attention: step time,
tokens/s, model FLOPs utilisation, first-call compile time.

    python benchmarks/train_step.py                     # GPU: L at 256 px / 64 and 512 px / 16
    python benchmarks/train_step.py --smoke             # CPU: a tiny model, checks the script

The step is the trainer's own: `lasad_jax.training.step.make_train_step` with the
optimizer of `lasad_jax.training.optimizer` (AdamW after global-norm clipping, EMA,
class dropout), bf16 compute, the settings of configs/imagenet256.py (copied here:
config files import ml_collections, which the GPU image lacks). Only the model, the ops
and the train step are imported. Batches are random codes (the time does not depend on
them); the state is donated, as in training.

The softmax model runs cuDNN's flash attention on an NVIDIA GPU (bf16;
`lasad_jax.models.mixers.attention_impl`, recorded as `attention` per row). Until
2026-12-05 it ran XLA's attention, which writes the `T x T` scores: the "Before" figures
in benchmarks/RESULTS.md compare against that weaker baseline.

Rows: each `--rows` entry is `grid:batch` (grid 16 = 256 px, 32 = 512 px with the VQ-16
tokenizer), run for each `--mixers` entry, the LASAD mixer with the operator's `impl="auto"`
and default chunk unless `--chunk_size` says otherwise; `--pallas` adds a LASAD row with
`impl="pallas"` (the Pallas kernels). Order: size by size (a time limit leaves whole
comparisons), softmax first, then LASAD with the Pallas kernels (40% fewer bytes per
step than the XLA form as compiled for an H200: the likelier winner), then `auto`.

FLOPs. `mfu` is the 6N rule, `6 * N * tokens/s / peak`, with `N` the parameters that
multiply activations (all but the two embedding tables): the same numerator per token for
both mixers, so it ranks like tokens/s. `attn_flops_per_token` states what the token mixer
adds on top, forward and backward (3x the forward), counted the PaLM way (matmuls only):
softmax `12 * layers * dim * T` (full `T x T` scores, as PaLM counts, not halved for
causality); LASAD the chunkwise-parallel form's matmuls: the intra-chunk scores over the
`C` tokens of a chunk (`12 * layers * dim * C`, the same count with `T -> C`), plus per
head the chunk sums and state reads (`2 * 2 * Dk * Dv`) and the smoothing
(`2 * w * Dk * Dv / R`) times 3. `mfu_with_attn` adds it. Peaks as benchmarks/kernels.py.
Each row is printed as it finishes and the JSON is rewritten per row. `--profile`: once
every row is saved, one more step of each runs under JAX's profiler (from a state built
again) and the row keeps the kernels its time went to (`benchmarks/device_profile.py`).

Compiling. The rows of one size are lowered from shapes (no weights), then compiled at
once, a thread each, before the first of them runs: LASADGen-L's step takes 20 to 90 s to
compile for an H200 on two CPU cores (benchmarks/gpu_aot.py), six of them one after
another would not fit device_check.sh's stage limit, and XLA's compiler works outside the
GIL. A compile never runs beside a timed step (the GPU autotuner times its candidates on
the device). `compile_s` is a row's lowering plus its compile, the latter beside its
size's other compiles: an upper bound on its compile time alone.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import os
import statistics
import sys
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.dirname(__file__))
from lasad_jax.models import LASADGen, ModelConfig  # noqa: E402
from lasad_jax.models.config import PRESETS, REMAT  # noqa: E402
from lasad_jax.models.mixers import attention_impl  # noqa: E402
from lasad_jax.ops.chunked import defaults  # noqa: E402
from lasad_jax.ops.pallas.chunked import chunk_rows  # noqa: E402
from lasad_jax.training.optimizer import make_optimizer, make_schedule  # noqa: E402
from lasad_jax.training.step import create_train_state, make_train_step  # noqa: E402
from common import run_info, write_json  # noqa: E402
from device_profile import format_profile, profile_call  # noqa: E402
from kernels import device_peaks  # noqa: E402


class _Fields(dict):
    """Attribute access to a dict: what the optimizer factories read from a config."""

    __getattr__ = dict.__getitem__


# configs/imagenet256.py: optimizer and train blocks.
OPTIMIZER = _Fields(lr=1e-4, b1=0.9, b2=0.95, eps=1e-8, weight_decay=0.05, grad_clip=1.0,
                    schedule="constant", warmup_steps=0, end_lr_fraction=1.0)
CLASS_DROPOUT, EMA_DECAY = 0.1, 0.9999
# Issue 18's targets: LASAD's step time over softmax's, by grid (256 px: no slower; 512 px:
# 0.8x). benchmarks/report.py applies them.
TARGETS = {16: 1.0, 32: 0.8}


def model_config(args, mixer: str, grid: int, impl: str = "auto") -> ModelConfig:
    layers, heads, dim = PRESETS[args.preset] if args.preset in PRESETS else (
        args.layers, args.heads, args.dim)
    return ModelConfig(vocab_size=args.vocab, num_classes=args.classes, grid=(grid, grid),
                       num_layers=layers, num_heads=heads, dim=dim, mixer=mixer,
                       dtype="bfloat16", impl=impl, chunk_size=args.chunk_size,
                       remat=args.remat)


def attention_impl_of(cfg: ModelConfig) -> str | None:
    """The softmax model's attention kernel for this config on this platform."""
    q = jax.ShapeDtypeStruct((1, cfg.num_tokens, cfg.num_heads, cfg.head_dim),
                             jnp.bfloat16 if cfg.dtype == "bfloat16" else jnp.float32)
    return attention_impl(q)


def matmul_params(model: LASADGen) -> int:
    """Parameters that multiply activations: everything but the embedding tables."""
    params = nnx.state(model, nnx.Param)
    total = sum(x.size for x in jax.tree.leaves(params))
    tables = model.class_embed.embedding[...].size + model.token_embed.embedding[...].size
    return int(total - tables)


def attn_flops_per_token(cfg: ModelConfig, chunk_size: int | None) -> float:
    """Token-mixer matmul FLOPs per token, forward and backward (module docstring)."""
    t = cfg.num_tokens  # slots: the class slot plus all image tokens but the last
    if cfg.mixer == "softmax":
        return 12.0 * cfg.num_layers * cfg.dim * t
    width = cfg.grid[1]
    rows, n = chunk_rows(width, chunk_size or defaults().chunk_size, t - 1)
    c = rows * width if n > 1 else t
    d = cfg.head_dim
    states = 0.0 if n == 1 else 2 * 2 * d * d + 2 * width * d * d / rows
    return 12.0 * cfg.num_layers * cfg.dim * c + 3.0 * cfg.num_layers * cfg.num_heads * states


@dataclasses.dataclass
class Program:
    """One row's step, lowered from shapes alone (no weights made), and then compiled."""

    mixer: str
    impl: str
    grid: int
    batch: int
    cfg: ModelConfig
    tx: Any
    batch_arrays: dict
    lowered: Any
    lower_s: float
    compiled: Any = None
    compile_s: float = 0.0


def abstract_step(args, mixer: str, grid: int, batch: int, impl: str = "auto",
                  grad_accum_steps: int = 1) -> tuple[ModelConfig, Any, Any, Any]:
    """`(cfg, tx, step, state shapes)` of a row, with no weights made: the trainer's step
    and state (`make_train_step`, `create_train_state`) as
    `training.generator.state_factory` builds them, whose module this script cannot import
    (it reads grain). benchmarks/gpu_aot.py compiles the same for a described GPU, with
    `grad_accum_steps` micro-batches in its `memory` stage."""
    cfg = model_config(args, mixer, grid, impl)
    schedule = make_schedule(OPTIMIZER, batch_size=batch, total_steps=1000)
    tx = make_optimizer(OPTIMIZER, schedule)
    graphdef = nnx.split(nnx.eval_shape(lambda: LASADGen(cfg, rngs=nnx.Rngs(0))), nnx.Param)[0]
    state = jax.eval_shape(lambda: create_train_state(LASADGen(cfg, rngs=nnx.Rngs(0)), tx,
                                                      seed=0)[1])
    step = make_train_step(graphdef, tx, schedule, class_dropout=CLASS_DROPOUT,
                           null_class=cfg.num_classes, ema_decay=EMA_DECAY,
                           grad_accum_steps=grad_accum_steps)
    return cfg, tx, step, state


def lower(args, mixer: str, grid: int, batch: int, impl: str = "auto") -> Program:
    """The row's training step lowered for its state's shapes (`abstract_step`)."""
    t0 = time.perf_counter()
    cfg, tx, step, abstract = abstract_step(args, mixer, grid, batch, impl)
    rng = np.random.default_rng(0)
    batch_arrays = {
        "label": jnp.asarray(rng.integers(0, cfg.num_classes, (batch,)), jnp.int32),
        "tokens": jnp.asarray(rng.integers(0, cfg.vocab_size, (batch, cfg.num_tokens)),
                              jnp.int32),
    }
    lowered = step.lower(abstract, batch_arrays)
    return Program(mixer, impl, grid, batch, cfg, tx, batch_arrays, lowered,
                   time.perf_counter() - t0)


def compile_together(programs: list[Program]) -> list[Exception | None]:
    """Compiles the programs at once, one thread each (XLA compiles outside the GIL), and
    returns each one's error or None. Before any row of a size runs: a compile running
    beside a timed step would share the device (the GPU autotuner times its candidates
    there) and the host. One size's rows at a time, so a time limit leaves whole sizes."""
    if not programs:  # every lowering of the size failed: nothing to compile
        return []

    def build(program: Program) -> None:
        t0 = time.perf_counter()
        program.compiled = program.lowered.compile()
        program.compile_s = program.lower_s + time.perf_counter() - t0

    with concurrent.futures.ThreadPoolExecutor(len(programs)) as pool:
        futures = [pool.submit(build, program) for program in programs]
        return [future.exception() for future in futures]


def measure(args, program: Program, peak: float | None) -> tuple[dict, Callable[[], dict]]:
    """The row of a compiled `program`, and a function that profiles one more step of it
    (`device_profile.profile_call`), for the caller to run once every row is timed. The
    function builds its own state when called, so the rows' states are not held until
    then (LASADGen-L's weights and Adam moments are gigabytes a row)."""
    cfg, compiled, batch_arrays = program.cfg, program.compiled, program.batch_arrays
    model = LASADGen(cfg, rngs=nnx.Rngs(0))
    n_matmul = matmul_params(model)
    state = create_train_state(model, program.tx, seed=0)[1]
    del model
    for _ in range(2):  # warm-up
        state, metrics = compiled(state, batch_arrays)
    jax.block_until_ready(metrics)
    times = []
    while len(times) < args.steps or (sum(times) < args.min_seconds and len(times) < 200):
        t0 = time.perf_counter()
        state, metrics = compiled(state, batch_arrays)
        jax.block_until_ready(metrics)
        times.append(time.perf_counter() - t0)
    step_s = statistics.median(times)
    batch, mixer = program.batch, program.mixer
    tokens = batch * cfg.num_tokens
    attn = attn_flops_per_token(cfg, args.chunk_size)
    row = dict(mixer=mixer, grid=program.grid, image_px=16 * program.grid, batch=batch,
               tokens=tokens, layers=cfg.num_layers, dim=cfg.dim, heads=cfg.num_heads,
               impl=cfg.impl, chunk_size=cfg.chunk_size, remat=cfg.remat,
               step_ms=1e3 * step_s,
               tokens_per_s=tokens / step_s, compile_s=program.compile_s,
               matmul_params=n_matmul, flops_6n_per_token=6.0 * n_matmul,
               attn_flops_per_token=attn, loss=float(metrics["loss"]), mfu=None,
               mfu_with_attn=None, status="ok",
               attention=(attention_impl_of(cfg) or "xla") if mixer == "softmax" else None)
    if peak:
        row["mfu"] = 6.0 * n_matmul * tokens / step_s / (peak * 1e12)
        row["mfu_with_attn"] = (6.0 * n_matmul + attn) * tokens / step_s / (peak * 1e12)

    del state

    def profile() -> dict:
        fresh = create_train_state(LASADGen(cfg, rngs=nnx.Rngs(0)), program.tx, seed=0)[1]
        fresh, out = compiled(fresh, batch_arrays)  # one step first, outside the trace
        jax.block_until_ready(out)

        def one_step():
            nonlocal fresh  # donated: each step hands the next its state
            fresh, out = compiled(fresh, batch_arrays)
            return out

        return profile_call(one_step, compiled.as_text())

    return row, profile


def print_row(r: dict) -> None:
    mfu = "" if r["mfu"] is None else (f"  MFU {100 * r['mfu']:.1f}% "
                                       f"({100 * r['mfu_with_attn']:.1f}% with attn)")
    print(f"{r['mixer']:8s} {r['impl']:6s} {r['image_px']:4d} px batch {r['batch']:3d}: "
          f"step {r['step_ms']:9.2f} ms"
          f"  {r['tokens_per_s']:12,.0f} tokens/s  compile {r['compile_s']:6.1f} s{mfu}",
          flush=True)


def print_table(rows: list[dict]) -> None:
    print("\n| mixer | impl | px | batch | step ms | tokens/s | MFU 6N | MFU 6N + attn "
          "| compile s |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    def pct(x: float | None) -> str:
        return "-" if x is None else f"{100 * x:.1f}%"

    for r in rows:
        if "step_ms" not in r:
            print(f"| {r['mixer']} | {r['impl']} | {r['image_px']} | {r['batch']} | "
                  f"{r['status']} | | | | |")
            continue
        print(f"| {r['mixer']} | {r['impl']} | {r['image_px']} | {r['batch']} | "
              f"{r['step_ms']:.2f} | "
              f"{r['tokens_per_s']:,.0f} | {pct(r['mfu'])} | {pct(r['mfu_with_attn'])} | "
              f"{r['compile_s']:.1f} |")


def ratios(rows: list[dict]) -> list[dict]:
    """LASAD step time over softmax step time per (impl, grid, batch)."""
    by = {(r["mixer"], r["impl"], r["grid"], r["batch"]): r["step_ms"] for r in rows
          if "step_ms" in r}
    return [dict(impl=i, grid=g, batch=b, lasad_over_softmax=ms / by[("softmax", "auto", g, b)])
            for (m, i, g, b), ms in by.items()
            if m == "lasad" and ("softmax", "auto", g, b) in by]


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--smoke", action="store_true", help="tiny model and batch (CPU check)")
    p.add_argument("--rows", nargs="+", default=None,
                   help="grid:batch pairs (grid 16 = 256 px, 32 = 512 px; default 16:64 "
                        "32:16, with --smoke 4:2)")
    p.add_argument("--mixers", nargs="+", default=["lasad", "softmax"])
    p.add_argument("--preset", default="L")
    p.add_argument("--layers", type=int, default=1)
    p.add_argument("--heads", type=int, default=2)
    p.add_argument("--dim", type=int, default=32)
    p.add_argument("--vocab", type=int, default=16384)
    p.add_argument("--classes", type=int, default=1000)
    p.add_argument("--pallas", action="store_true",
                   help="also LASAD with impl='pallas', after the other rows")
    p.add_argument("--chunk_size", type=int, default=None)
    p.add_argument("--remat", default="none", choices=REMAT,
                   help="activation checkpointing per block (ModelConfig.remat)")
    p.add_argument("--profile", action="store_true",
                   help="run one more step of each row under JAX's profiler: where the time "
                        "goes (benchmarks/device_profile.py)")
    p.add_argument("--steps", type=int, default=10, help="at least this many timed steps")
    p.add_argument("--min_seconds", type=float, default=2.0, help="and at least this long")
    p.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results",
                                                 f"train_step_{jax.default_backend()}.json"))
    args = p.parse_args(argv)
    if args.smoke:
        args.preset, args.vocab, args.classes = "custom", 32, 4
        args.rows, args.steps, args.min_seconds = args.rows or ["4:2"], 2, 0.0
    args.rows = args.rows or ["16:64", "32:16"]
    peak, _ = device_peaks()
    info = run_info(preset=args.preset, dtype="bfloat16", optimizer=dict(OPTIMIZER),
                    peak_tflops=peak)
    rows = []

    def result(complete: bool) -> dict:
        return dict(info=info, complete=complete, rows=rows, ratios=ratios(rows))

    profiles: list[tuple[dict, Callable[[], dict]]] = []
    order = [(m, "auto") for m in args.mixers if m != "lasad"]
    order += [("lasad", "pallas")] if args.pallas else []
    order += [("lasad", "auto")] if "lasad" in args.mixers else []
    for spec in args.rows:
        grid, batch = (int(x) for x in spec.split(":"))
        programs, errors = [], []
        for mixer, impl in order:
            print(f"{mixer} ({impl}) grid {grid} batch {batch}: lowering "
                  f"({time.strftime('%H:%M:%S')})", flush=True)
            try:
                programs.append(lower(args, mixer, grid, batch, impl))
            except Exception as e:  # a model this config cannot build
                errors.append((mixer, impl, e))
        print(f"grid {grid} batch {batch}: compiling {len(programs)} steps at once "
              f"({time.strftime('%H:%M:%S')})", flush=True)
        for program, error in zip(programs, compile_together(programs)):
            if error is not None:  # out of memory, or a compile this device refuses
                errors.append((program.mixer, program.impl, error))
        failed = {(m, i): e for m, i, e in errors}
        for mixer, impl in order:  # every row of the size, then the next size
            program = next((p for p in programs if (p.mixer, p.impl) == (mixer, impl)
                            and (mixer, impl) not in failed), None)
            profile = None
            try:
                if program is None:
                    raise failed[(mixer, impl)]
                row, profile = measure(args, program, peak)
            except Exception as e:  # out of memory, a refused compile or lowering
                row = dict(mixer=mixer, impl=impl, grid=grid, image_px=16 * grid, batch=batch,
                           status=f"failed: {type(e).__name__}: {str(e)[:200]}")
                print(row["status"], flush=True)
            else:
                print_row(row)
            rows.append(row)
            write_json(args.out, result(False), quiet=True)
            if profile and args.profile:  # kept (an executable, not a state) for the end
                profiles.append((row, profile))
            elif program is not None:
                program.compiled = None  # frees its executable
    # Profiles once every size's rows are saved: a time limit then cuts profiles, not the
    # 512 px rows that carry their own target. Each builds its row's state afresh.
    for row, profile in profiles:
        print(f"profile: {row['mixer']} ({row['impl']}) {row['image_px']} px batch "
              f"{row['batch']}", flush=True)
        row["profile"] = profile()
        print("\n".join(format_profile(row["profile"])), flush=True)
        write_json(args.out, result(False), quiet=True)
    profiles.clear()
    final = result(True)
    print_table(rows)
    for r in final["ratios"]:
        print(f"lasad ({r['impl']}) / softmax step time, {16 * r['grid']} px batch {r['batch']}: "
              f"{r['lasad_over_softmax']:.2f}")
    write_json(args.out, final)
    return final


if __name__ == "__main__":
    main()
