"""Compiles LASADGen's training step, its sampler and the Pallas operator for a Cloud TPU
slice that is not here, and reports what the compile says: does it compile, does it fit.

    pip install "jax[tpu]==$(python -c 'import jax; print(jax.__version__)')"  # libtpu
    python benchmarks/tpu_aot.py --topology v5e-8 --out benchmarks/results/tpu_aot_v5e-8.json
    python benchmarks/tpu_aot.py --topology v4-8 --stages train --mixers lasad

libtpu compiles for a described TPU topology on a CPU machine (JAX's ahead-of-time path,
`jax.experimental.topologies.get_topology_desc`), through the TPU compiler a slice would
run: SPMD partitioning over the mesh, fusion, memory assignment and the Mosaic compile of
every Pallas kernel (which rejects block shapes a TPU cannot tile and kernels that
overflow its VMEM). Nothing runs, so nothing here is a time. No TPU has run this code; the
launch scripts (launch/tpu/run.sh) send it to slices like these, and a program that does
not compile or does not fit there fails after the slice is paid for. This says so before.

Stages (`--stages`):
* `train`: the trainer's step (`lasad_jax.jobs.train` builds the same: `state_factory`,
  `make_train_step` with the state's shardings, the batch split over `data` x `fsdp`) for
  `--config` (default configs/imagenet256.py: LASADGen-L, bf16, FSDP over every chip,
  batch 256) on the slice's mesh, 256 px at the config's batch and 512 px (`--grids`) at
  a quarter of it (as many tokens per step), for `lasad` with `impl="auto"` (the XLA
  chunked form; `ops.AUTO_TABLE` has no TPU row yet), `lasad` with `impl="pallas"` (the
  Mosaic kernels) and `softmax` (with splash attention, `models.mixers.attention_impl`'s
  choice on TPU, recorded as `attention`). Per row: compiles or not (the error's first
  line), the Mosaic kernels in the program, each chip's peak memory against its HBM.
* `sample`: `sampling.generate`'s program for the config's model at 256 px, batch 64
  with guidance 2.0 (128 rows) split over the mesh, for each mixer: the sampler's HLO
  check (`lasad_jax.sampling.hlo_check`: no decoding-cache array copied or rebuilt in
  the token loop) on the TPU program, at the shapes each chip holds, and the peak memory.
  A TPU program also moves whole arrays between HBM and on-chip memory (the memory-space
  assignment's `copy-start`s into VMEM, `S(1)`, or v4's CMEM, `S(3)`), which GPU and CPU
  programs do not: moves of cache arrays no larger than one column state (the LASAD
  rings) are listed apart with their bytes per token (`hlo_check.check_loops`), moves of
  larger ones (a softmax KV cache) are findings. Findings are recorded and printed but do
  not fail the run, since a softmax step reads its whole cache anyway and only a TPU can
  time what a move costs; a loop the check cannot find does fail it.
* `ops`: `lasad` forward+backward with `impl="pallas"` on one chip, bf16, batch 1,
  16 heads, D = 64 and 128, T = 256 ... 16384 (the operator benchmark's shapes): does
  Mosaic compile every kernel, and what temporary memory the program needs.

Prints each row as it is compiled, rewrites `--out` after each, exits 1 if a program does
not compile or does not fit.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
import traceback

os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")  # no metadata server to ask: not on a TPU VM

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.dirname(__file__))
from common import run_info, write_json  # noqa: E402
from generation import memory_row  # noqa: E402  (each chip's peak and whether it fits)

STAGES = ("train", "sample", "ops")
GIB = 2 ** 30
# Slice name -> (libtpu topology, chip config, chips per host, HBM bytes per chip). HBM
# from Google's Cloud TPU system-architecture pages; a megacore chip (v4, v5p) is one JAX
# device.
TOPOLOGIES = {
    "v4-8": ("v4:2x2x1", "megacore", (2, 2, 1), 32 * GIB),
    "v5e-8": ("v5e:2x4", "default", (2, 4, 1), 16 * GIB),
    "v5e-64": ("v5e:8x8", "default", (2, 4, 1), 16 * GIB),
    "v5p-8": ("v5p:2x2x1", "megacore", (2, 2, 1), 95 * GIB),
    "v6e-8": ("v6e:2x4", "default", (2, 4, 1), 32 * GIB),
}
CONFIG = os.path.join(os.path.dirname(__file__), "..", "configs", "imagenet256.py")
MOSAIC = "tpu_custom_call"
TRITON = "__gpu$xla.gpu.triton"


def tpu_devices(name: str) -> list:
    """The compile-only devices of slice `name` (see TOPOLOGIES)."""
    from jax.experimental import topologies

    topology, chip, host, _ = TOPOLOGIES[name]
    try:
        devices = topologies.get_topology_desc(
            platform="tpu", topology_name=topology, chip_config_name=chip,
            chips_per_host_bounds=host, num_slices=1).devices
    except Exception as err:  # no libtpu: a RuntimeError or a missing plugin
        sys.exit(f"tpu_aot.py needs libtpu (pip install 'jax[tpu]=={jax.__version__}'); no TPU "
                 f"is needed. Could not describe {name}: {str(err).splitlines()[0][:200]}")
    # Pallas asks the default device which platform it lowers for (ops.platform).
    jax.config.update("jax_default_device", devices[0])
    return list(devices)


def run_settings(config_path: str):
    """(mesh, model fields, batch size, optimizer, train block) of a generator config file,
    through the same typed blocks the trainer parses."""
    from lasad_jax.config import load_config_file
    from lasad_jax.parallel.mesh import MeshConfig
    from lasad_jax.training.config import OptimizerConfig, TrainConfig
    from lasad_jax.validation import ConfigError, block_from_mapping

    try:
        values = load_config_file(config_path).to_dict()
    except ConfigError as err:
        sys.exit(str(err))
    if values.get("task", "generator") != "generator":
        sys.exit(f"--config: {config_path} is not a generator config (task={values['task']!r})")
    return (block_from_mapping(MeshConfig, "mesh", values["mesh"]), dict(values["model"]),
            int(values["batch_size"]),
            block_from_mapping(OptimizerConfig, "optimizer", values["optimizer"]),
            block_from_mapping(TrainConfig, "train", values["train"]))


def model_config(fields: dict, grid: int, **overrides):
    """The typed model of the config's fields at a `grid x grid` token grid, VQ-16 codes
    (16384 entries) and ImageNet's 1000 classes, as the trainer sizes it."""
    from lasad_jax.models import ModelConfig

    return ModelConfig.from_config({**fields, **overrides}, vocab_size=16384,
                                   grid=(grid, grid), num_classes=1000)


def compile_row(lower) -> tuple[object | None, str | None, float]:
    """(compiled program or None, the error's first line or None, seconds)."""
    t0 = time.perf_counter()
    try:
        compiled = lower().compile()
    except Exception as err:  # a Mosaic or XLA refusal: recorded, the next row still runs
        lines = [ln for ln in str(err).splitlines() if ln.strip()] or [type(err).__name__]
        if os.environ.get("TPU_AOT_TRACEBACK"):
            traceback.print_exc()
        return None, f"{type(err).__name__}: {lines[0][:300]}", time.perf_counter() - t0
    return compiled, None, time.perf_counter() - t0


def train_cases(batch: int, grids: list[int], mixers: list[str]) -> list[tuple]:
    """(grid, batch, mixer, impl) of each train row: grid g at the config's `batch` x
    (16 / g)^2 images (as many tokens per step as at 256 px), `lasad` with `impl="auto"`
    and `"pallas"`, softmax with its one attention."""
    return [(grid, max(1, batch * 16 * 16 // (grid * grid)), mixer, impl) for grid in grids
            for mixer in mixers for impl in (("auto", "pallas") if mixer == "lasad" else ("auto",))]


def train_row(devices, hbm: int, settings, grid: int, batch: int, mixer: str, impl: str) -> dict:
    from lasad_jax.parallel.batch import batch_sharding
    from lasad_jax.parallel.mesh import build_mesh
    from lasad_jax.parallel.state import abstract_with_shardings
    from lasad_jax.training.generator import state_factory
    from lasad_jax.training.step import make_train_step

    mesh_config, fields, _, optimizer, train = settings
    mesh = build_mesh(mesh_config, devices)
    model = model_config(fields, grid, mixer=mixer, impl=impl)
    graphdef, init, tx, schedule = state_factory(model, optimizer, batch_size=batch, seed=0,
                                                 total_steps=1000)
    state, shardings = abstract_with_shardings(init, mesh)
    step = make_train_step(graphdef, tx, schedule, class_dropout=train.class_dropout,
                           null_class=model.num_classes, ema_decay=train.ema_decay,
                           state_shardings=shardings, nonfinite=train.nonfinite)
    batch_arrays = {
        "label": jax.ShapeDtypeStruct((batch,), jnp.int32, sharding=batch_sharding(mesh)),
        "tokens": jax.ShapeDtypeStruct((batch, model.num_tokens), jnp.int32,
                                       sharding=batch_sharding(mesh, 2))}
    with jax.set_mesh(mesh):
        compiled, error, seconds = compile_row(lambda: step.lower(state, batch_arrays))
    row = dict(stage="train", mixer=mixer, impl=impl, grid=grid, pixels=16 * grid,
               batch=batch, mesh=dict(mesh.shape), compile_s=seconds, error=error)
    if mixer == "softmax":  # its attention kernel: splash attention on TPU
        from train_step import attention_impl_of

        row["attention"] = attention_impl_of(model) or "xla"
    if compiled is not None:
        row.update(pallas_kernels(compiled.as_text(), devices[0].platform),
                   **memory_row(compiled, hbm))
    return row


def pallas_kernels(text: str, platform: str) -> dict[str, int]:
    """How many Pallas kernels a compiled program calls: Mosaic's on a TPU, Triton's on a
    GPU (benchmarks/gpu_aot.py's `node` stage runs these rows for a GPU host)."""
    if platform == "tpu":
        return {"mosaic_kernels": text.count(MOSAIC)}
    return {"triton_kernels": text.count(TRITON)}


def loops_carrying(text: str, guarded: dict) -> int:
    """How many `while` loops of the program carry a guarded array: a check that found
    no loop to read checked nothing."""
    from lasad_jax.sampling.hlo_check import arrays, parse_hlo

    keys = {tuple(sorted(shape)) for shape in guarded.values()}
    return sum(1 for instrs in parse_hlo(text).values() for i in instrs
               if i.op == "while" and any(tuple(sorted(d)) in keys for _, d in arrays(i.shape)))


def sample_row(devices, hbm: int, settings, grid: int, batch: int, mixer: str) -> dict:
    from flax import nnx

    from lasad_jax.models import LASADGen
    from lasad_jax.parallel.batch import batch_sharding
    from lasad_jax.parallel.mesh import batch_shards, build_mesh
    from lasad_jax.parallel.state import replicated
    from lasad_jax.sampling.generate import _generate, cache_batch_axes
    from lasad_jax.sampling.hlo_check import check_loops, guarded_arrays
    from lasad_jax.training.generator import params_target

    mesh_config, fields, *_ = settings
    mesh = build_mesh(mesh_config, devices)
    model = model_config(fields, grid, mixer=mixer)
    graphdef, params = params_target(model, mesh)
    labels = jax.ShapeDtypeStruct((batch,), jnp.int32, sharding=batch_sharding(mesh))
    key = jax.eval_shape(lambda: jax.random.key(0))
    key = jax.ShapeDtypeStruct(key.shape, key.dtype, sharding=replicated(mesh))
    with jax.set_mesh(mesh):
        compiled, error, seconds = compile_row(lambda: _generate.lower(
            graphdef, params, labels, key, cfg_scale=2.0, temperature=1.0, top_k=0,
            top_p=1.0))
    row = dict(stage="sample", mixer=mixer, grid=grid, pixels=16 * grid, batch=batch,
               rows=2 * batch, mesh=dict(mesh.shape), compile_s=seconds, error=error)
    if compiled is None:
        return row
    # The program a chip runs holds its share of the rows: check the cache at that size.
    rows = 2 * batch // batch_shards(mesh)
    abstract = nnx.eval_shape(lambda: LASADGen(model, rngs=nnx.Rngs(0)))
    cache = jax.eval_shape(lambda: abstract.init_cache(rows))
    column = rows * model.num_heads * model.head_dim ** 2
    guarded = guarded_arrays(cache, cache_batch_axes(abstract.init_cache, rows), column)
    text = compiled.as_text()
    problems, moves = check_loops(text, guarded, movable=column)
    row.update(rows_per_chip=rows, hlo_loops=loops_carrying(text, guarded),
               hlo_findings=len(problems), hlo_problems=[p[:300] for p in problems[:5]],
               hlo_moves=len(moves), hlo_moves_in_bytes=sum(m.nbytes for m in moves if m.into_chip),
               hlo_moves_out_bytes=sum(m.nbytes for m in moves if not m.into_chip),
               **memory_row(compiled, hbm))
    if mixer == "lasad":  # what its token moves anyway: a column state read and written per layer
        row["column_traffic_bytes"] = (2 * model.num_layers * column
                                       * jnp.dtype(model.decode_state_dtype).itemsize)
    return row


def ops_row(device, hbm: int, tokens: int, head_dim: int) -> dict:
    from lasad_jax import ops

    width, heads = math.isqrt(tokens), 16
    sharding = jax.sharding.SingleDeviceSharding(device)
    x = jax.ShapeDtypeStruct((1, tokens, heads, head_dim), jnp.bfloat16, sharding=sharding)
    decay = jax.ShapeDtypeStruct((heads,), jnp.float32, sharding=sharding)

    def loss(q, k, v, row_decay, col_decay):
        out = ops.lasad_attention(q, k, v, width=width, row_decay=row_decay,
                                  col_decay=col_decay, impl="pallas")
        return jnp.sum(out.astype(jnp.float32))

    fwd_bwd = jax.jit(jax.value_and_grad(loss, argnums=range(5)))
    compiled, error, seconds = compile_row(lambda: fwd_bwd.lower(x, x, x, decay, decay))
    row = dict(stage="ops", tokens=tokens, head_dim=head_dim, heads=heads, batch=1,
               compile_s=seconds, error=error)
    if compiled is not None:
        row.update(mosaic_kernels=compiled.as_text().count(MOSAIC), **memory_row(compiled, hbm))
    return row


def out_of_memory(error: str | None) -> bool:
    """Whether a compile error is the compiler finding the program larger than HBM."""
    return bool(error) and "RESOURCE_EXHAUSTED" in error and "HBM" in error


def verdict(row: dict) -> str:
    if row["error"]:
        what = "DOES NOT FIT" if row.get("fits") is False else "DOES NOT COMPILE"
        return f"{what}: {row['error']}"
    parts = [f"peak {row['peak_bytes'] / GIB:6.2f} GiB"]
    if row["fits"] is False:
        parts.append("DOES NOT FIT")
    if "mosaic_kernels" in row:
        parts.append(f"{row['mosaic_kernels']} Mosaic kernels")
    if "triton_kernels" in row:
        parts.append(f"{row['triton_kernels']} Triton kernels")
    if "hlo_problems" in row:
        found = row["hlo_problems"]
        parts.append(f"HLO check on {row['hlo_loops']} loop(s): " + (
            "ok" if not found else f"{row['hlo_findings']} findings, e.g. {found[0][:120]}"))
        if row.get("hlo_moves"):
            moved = (f"{row['hlo_moves']} on-chip moves of arrays up to a column: "
                     f"{row['hlo_moves_in_bytes'] / 1e6:.1f} MB in, "
                     f"{row['hlo_moves_out_bytes'] / 1e6:.1f} MB out per token")
            if "column_traffic_bytes" in row:
                moved += (f", against {row['column_traffic_bytes'] / 1e6:.0f} MB of column "
                          f"states read and written")
            parts.append(moved)
    return ", ".join(parts) + f" ({row['compile_s']:.0f} s)"


def failed(row: dict) -> bool:
    """A program that does not compile or fit, or a sampler whose token loop the HLO check
    could not find (the TPU findings themselves are reported: module docstring)."""
    return bool(row["error"] or row.get("fits") is False or row.get("hlo_loops") == 0)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--topology", default="v5e-8", choices=sorted(TOPOLOGIES))
    p.add_argument("--config", default=CONFIG, help="a generator config file")
    p.add_argument("--stages", default=",".join(STAGES), help=f"comma-separated, from {STAGES}")
    p.add_argument("--mixers", nargs="+", default=["lasad", "softmax"])
    p.add_argument("--grids", nargs="+", type=int, default=[16, 32],
                   help="train rows: token grids (16 = 256 px); grid g trains on the "
                        "config's batch x (16 / g)^2 images, the same tokens per step")
    p.add_argument("--sample_batch", type=int, default=64)
    p.add_argument("--tokens", nargs="+", type=int, default=[256, 1024, 4096, 16384])
    p.add_argument("--head_dims", nargs="+", type=int, default=[64, 128])
    p.add_argument("--out", default=None, help="JSON (default: "
                   "benchmarks/results/tpu_aot_TOPOLOGY.json)")
    args = p.parse_args(argv)
    stages = args.stages.split(",")
    bad = [s for s in stages if s not in STAGES]
    if bad:
        sys.exit(f"--stages: unknown {bad}; valid: {', '.join(STAGES)}")
    bad = [m for m in args.mixers if m not in ("lasad", "softmax")]
    if bad:
        sys.exit(f"--mixers: unknown {bad}; valid: lasad, softmax")
    out = args.out or os.path.join(os.path.dirname(__file__), "results",
                                   f"tpu_aot_{args.topology}.json")
    settings = run_settings(args.config)
    devices = tpu_devices(args.topology)
    hbm = TOPOLOGIES[args.topology][3]
    result = dict(info=run_info(compiled_for=f"{args.topology} ({devices[0].device_kind}, "
                                             f"{len(devices)} chips)",
                                config=os.path.relpath(args.config),
                                hbm_bytes_per_chip=hbm,
                                note="compiled only, nothing ran: does each program compile "
                                     "and fit, per chip"),
                  rows=[])
    print(f"{args.topology}: {len(devices)} x {devices[0].device_kind}, "
          f"{hbm / GIB:.0f} GiB HBM per chip; config {os.path.relpath(args.config)}",
          flush=True)

    def report(label: str, row: dict) -> None:
        if out_of_memory(row["error"]):
            row["fits"] = False  # compiled far enough to know it needs more than HBM
        result["rows"].append(row)
        print(f"{label:42s} {verdict(row)}", flush=True)
        write_json(out, result, quiet=True)

    _, _, batch, *_ = settings
    if "train" in stages:
        for grid, rows_batch, mixer, impl in train_cases(batch, args.grids, args.mixers):
            row = train_row(devices, hbm, settings, grid, rows_batch, mixer, impl)
            how = impl if mixer == "lasad" else row["attention"]
            report(f"train {16 * grid}px batch {rows_batch} {mixer} {how}", row)
    if "sample" in stages:
        for mixer in args.mixers:
            row = sample_row(devices, hbm, settings, 16, args.sample_batch, mixer)
            report(f"sample 256px batch {args.sample_batch} {mixer}", row)
    if "ops" in stages:
        for head_dim in args.head_dims:
            for tokens in args.tokens:
                row = ops_row(devices[0], hbm, tokens, head_dim)
                report(f"ops pallas T={tokens} D={head_dim}", row)
    bad_rows = [r for r in result["rows"] if failed(r)]
    result["complete"] = True
    write_json(out, result)
    if bad_rows:
        sys.exit(f"{len(bad_rows)} program(s) failed to compile or fit (see above)")
    return result


if __name__ == "__main__":
    main()
