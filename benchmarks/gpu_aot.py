"""Compiles the sampler and the operator for a GPU that is not here, and reads the result.

    pip install "jax[cuda12]==$(python -c 'import jax; print(jax.__version__)')"
    JAX_PLATFORMS=cpu python benchmarks/gpu_aot.py --out benchmarks/results/gpu_aot_h200.json
    python benchmarks/gpu_aot.py --stages decode --presets B --grids 16   # one row pair
    python benchmarks/gpu_aot.py --target benchmarks/gpu_targets/h100.txtpb --stages node

XLA compiles for a described GPU without one (deviceless compilation: the device is a
`GpuTargetConfigProto`, `--target`, by default benchmarks/gpu_targets/h200.txtpb). That
runs the real GPU pipeline on a CPU machine: fusion, layout assignment, copy insertion
and the Triton compile of every Pallas kernel (whose shared-memory limits it checks).
Only the CUDA plugin is needed, no GPU. Nothing runs, so nothing here is a time: the
figures are what the compiled program moves through memory (benchmarks/hlo_traffic.py)
and how many kernels it launches, and the time those bytes alone would take at the
device's HBM bandwidth (a floor). A GPU run (benchmarks/device_check.sh) measures; this
says, before one is lent, where the bytes go and what the device may not reject.

Stages (`--stages`):
* `decode`: `sampling.generate`'s program for presets B and L at 16x16, 24x24 and 32x32
  tokens (256, 384, 512 px), `lasad` (float32 and bfloat16 states; the XLA step and the
  fused Pallas column update, `decode_impl`) and `softmax`, bf16, batch 64 with
  guidance 2.0 (128 rows). Per row: `sampling.hlo_check` on the GPU
  program (a problem makes the script exit 1), HBM bytes and kernel launches per token,
  the bandwidth floor per batch, and LASAD's floor over softmax's.
* `ops`: forward+backward of `lasad` (bf16, batch 1, 16 heads, D = 64, square grids) at
  T = 256, 1024, 4096 and 16384: the XLA chunked form (all chunks at once, the GPU
  default) and the Pallas split, chunks of 1024, 2048 and 4096 tokens (a chunk >= T is one
  chunk: run once). Per row: HBM bytes, launches, XLA's temporary buffer, the floor.
* `train`: one training step of LASADGen-L as benchmarks/train_step.py builds it, 256 px
  batch 64 and 512 px batch 16: `lasad` with `impl="auto"` (the XLA chunked form on
  GPU), `lasad` with `impl="pallas"`, and `softmax` (`jax.nn.dot_product_attention`,
  whose choice of XLA or cuDNN attention the row records). Per row: bytes, launches,
  the floor and XLA's temporary buffer; matmul time is not in a byte floor.
* `memory` (named, not run by default): the two memory settings of a training run, on
  LASADGen-L's step. LlamaGen's batch on one GPU, the case `train.grad_accum_steps` is
  for: 256 px with batch 256 and 512 px with batch 64, `lasad` (`auto`) and `softmax`,
  in one batch and in 4 micro-batches (`training.step.accumulate`); then activation
  checkpointing (`model.remat`: "none", "dots", "full") at 256 px with batch 64.
  Per row: peak and temporaries against the usable memory (a row that does not fit is
  what this stage shows, not a failure), bytes moved.
* `node` (named, not run by default: it reads a config file, so it needs the trainer's
  packages): the trainer's step and the sampler of `--config` (configs/imagenet256.py:
  LASADGen-L, FSDP over every GPU, batch 256) on `--node_hosts` hosts (default 1) of
  `--node_gpus` GPUs (8), as launch/gpu/slurm.sh runs them, through
  benchmarks/tpu_aot.py's `train_row` and `sample_row`: 256 px at the config's batch and
  512 px at a quarter of it, `lasad` (`auto` and `pallas`) and `softmax`; the sampler
  at 256 px. Per row: compiles or not, the Triton kernels, each GPU's peak against the
  usable memory, and the sampler's HLO check at the rows one GPU holds.

Prints each row as it is compiled and rewrites `--out` after each.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time

import jax
import jax.numpy as jnp

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.dirname(__file__))
from common import run_info, write_json  # noqa: E402
from generation import memory_row  # noqa: E402
from hlo_traffic import summary, traffic  # noqa: E402
from sampling import tree_bytes  # noqa: E402

STAGES = ("decode", "ops", "train", "memory", "node")
# `memory` stage rows: (grid, batch, grad_accum_steps, remat), each for lasad and softmax.
MEMORY_ROWS = ((16, 256, 1, "none"), (16, 256, 4, "none"), (32, 64, 1, "none"),
               (32, 64, 4, "none"), (16, 64, 1, "none"), (16, 64, 1, "dots"),
               (16, 64, 1, "full"))
DEFAULT_STAGES = ("decode", "ops", "train")  # `node` reads a config file: the trainer's packages
SHORT = {"float32": "f32", "bfloat16": "bf16"}
# (mixer, state dtype, decode_impl) of each decode row, per preset and grid.
DECODE_ROWS = (("lasad", "float32", "xla"), ("lasad", "bfloat16", "xla"),
               ("lasad", "float32", "pallas"), ("lasad", "bfloat16", "pallas"),
               ("softmax", "float32", "auto"))
TARGET = os.path.join(os.path.dirname(__file__), "gpu_targets", "h200.txtpb")
# The share of device memory JAX's allocator takes in benchmarks/device_check.sh
# (XLA_PYTHON_CLIENT_MEM_FRACTION there; JAX's own default is 0.75).
MEMORY_FRACTION = 0.9


def gpu_devices(target: str, count: int = 1, hosts: int = 1) -> list:
    """`count` compile-only GPUs on each of `hosts` hosts, each described by the target
    config at `target`; the first is also made the default device, because Pallas' Triton
    lowering asks the default device which GPU it compiles for."""
    from jax.experimental import topologies

    if not os.path.isfile(target):
        sys.exit(f"--target: no such file {target!r} (a GpuTargetConfigProto text file, "
                 f"e.g. {os.path.relpath(TARGET)})")
    with open(target) as f:
        config = f.read()
    try:  # "slices x hosts x devices per host"
        topo = topologies.get_topology_desc("aot", "cuda", target_config=config,
                                            topology=f"1x{hosts}x{count}")
    except (NotImplementedError, RuntimeError, ValueError) as err:
        sys.exit(f"gpu_aot.py needs JAX's CUDA plugin (pip install 'jax[cuda12]=="
                 f"{jax.__version__}'); no GPU is needed. Could not make the device: {err}")
    jax.config.update("jax_default_device", topo.devices[0])
    return list(topo.devices)


def gpu_device(target: str):
    """One compile-only GPU (`gpu_devices`)."""
    return gpu_devices(target)[0]


def target_figure(target: str, field: str) -> float:
    """A number from the target config: `memory_bandwidth` (HBM bytes per second) or
    `device_memory_size` (bytes)."""
    with open(target) as f:
        for line in f:
            if line.strip().startswith(field + ":"):
                return float(line.split(":")[1])
    raise ValueError(f"{target} gives no {field}")


def gb(n: int | None) -> float:
    return math.nan if n is None else n / 1e9


def abstract(tree, device):
    sharding = jax.sharding.SingleDeviceSharding(device)
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding),
                        tree)


def _decode_token_bytes(operands: list[int], results: list[int],
                        shapes: list[str]) -> tuple[int, int]:
    """What `ops.pallas.decode.token_kernel` moves: one column of the aliased state
    `[w, B*H, Dk, Dv]` (operand 1, result 0) read and written, the aliased key and value
    rings `[B*H, slots, D]` (operands 2, 3; results 1, 2) read whole and written one slot,
    its other operands read whole, its output `o` (result 3) written."""
    from hlo_traffic import arrays

    width = arrays(shapes[1])[0][1][0]
    slots = arrays(shapes[2])[0][1][1]
    read = sum(operands) - operands[1] + operands[1] // width
    return read, results[0] // width + (results[1] + results[2]) // slots + results[3]


# Pallas kernels the HLO cannot see into, by their Triton name (hlo_traffic.traffic).
KERNELS = {"lasad_decode_token": _decode_token_bytes}


def _save(hlo_dir: str | None, name: str, text: str) -> None:
    if hlo_dir:
        os.makedirs(hlo_dir, exist_ok=True)
        with open(os.path.join(hlo_dir, name + ".hlo"), "w") as f:
            f.write(text)


def decode_row(device, preset: str, grid: int, mixer: str, state_dtype: str, decode_impl: str,
               batch: int, bw: float, usable: float, hlo_dir: str | None = None) -> dict:
    from flax import nnx

    from lasad_jax.models import LASADGen, ModelConfig
    from lasad_jax.models.config import PRESETS
    from lasad_jax.sampling.generate import _generate, cache_batch_axes
    from lasad_jax.sampling.hlo_check import guarded_arrays, loop_problems

    layers, heads, dim = PRESETS[preset]
    cfg = ModelConfig(vocab_size=16384, num_classes=1000, grid=(grid, grid), num_layers=layers,
                      num_heads=heads, dim=dim, mixer=mixer, dtype="bfloat16",
                      decode_state_dtype=state_dtype, decode_impl=decode_impl)
    model = nnx.eval_shape(lambda: LASADGen(cfg, rngs=nnx.Rngs(0)))
    graphdef, params = nnx.split(model)
    rows = 2 * batch
    key = jax.eval_shape(lambda: jax.random.key(0))
    t0 = time.perf_counter()
    compiled = _generate.lower(
        graphdef, abstract(params, device), abstract(jax.ShapeDtypeStruct((batch,), jnp.int32),
                                                     device),
        abstract(key, device), cfg_scale=2.0, temperature=1.0, top_k=0, top_p=1.0).compile()
    compile_s = time.perf_counter() - t0
    text = compiled.as_text()
    _save(hlo_dir, f"decode_{preset}_{grid}_{mixer}_{decode_impl}_{state_dtype}", text)
    cache = jax.eval_shape(lambda: model.init_cache(rows))
    column = rows * heads * cfg.head_dim ** 2
    guarded = guarded_arrays(cache, cache_batch_axes(model.init_cache, rows), column)
    problems = loop_problems(text, guarded, movable=column)
    step = summary(traffic(text, KERNELS), loop=True)
    tokens = cfg.num_tokens
    floor_s = step["bytes"] / bw * tokens
    return dict(preset=preset, grid=grid, pixels=16 * grid, mixer=mixer,
                state_dtype=state_dtype, decode_impl=decode_impl, batch=batch, rows=rows,
                compile_s=compile_s,
                hlo_problems=problems, bytes_per_token=step["bytes"],
                launches_per_token=step["launches"], bytes_by_kind=step["bytes_by_kind"],
                floor_ms_per_token=1e3 * step["bytes"] / bw,
                ceiling_images_per_s=batch / floor_s,
                state_bytes=tree_bytes(cache), **memory_row(compiled, usable))


def ops_row(device, tokens: int, impl: str, chunk: int, bw: float, usable: float,
            hlo_dir: str | None = None) -> dict:
    """Forward+backward of `lasad` as benchmarks/kernels.py times it on a GPU (its
    `lasad_fn` and `op_scaling.programs`), compiled for the device."""
    from kernels import lasad_fn
    from op_scaling import programs

    from lasad_jax.ops import chunked

    width, heads, d = math.isqrt(tokens), 16, 64
    fn = lasad_fn(f"lasad_{impl}", width, chunk, chunked.DEFAULT_REMAT,
                  chunked.DEFAULT_STATE_PASS)
    x = jax.ShapeDtypeStruct((1, tokens, heads, d), jnp.bfloat16)
    decay = jax.ShapeDtypeStruct((heads,), jnp.float32)
    t0 = time.perf_counter()
    compiled = programs(fn)["fwd_bwd"].lower(
        *abstract((x, x, x, decay, decay), device)).compile()
    compile_s = time.perf_counter() - t0
    _save(hlo_dir, f"ops_{tokens}_{impl}_{chunk}", compiled.as_text())
    total = summary(traffic(compiled.as_text()))
    return dict(tokens=tokens, impl=impl, chunk_size=chunk, batch=1, heads=heads, head_dim=d,
                compile_s=compile_s, bytes=total["bytes"], launches=total["launches"],
                bytes_by_kind=total["bytes_by_kind"], floor_ms=1e3 * total["bytes"] / bw,
                **memory_row(compiled, usable))


def train_row(device, mixer: str, impl: str, grid: int, batch: int, bw: float, usable: float,
              hlo_dir: str | None = None, grad_accum_steps: int = 1, remat: str = "none"
              ) -> dict:
    """One jitted training step of LASADGen-L as benchmarks/train_step.py builds it (the
    trainer's step, AdamW, EMA, bf16), compiled for the device."""
    import train_step

    settings = argparse.Namespace(preset="L", vocab=16384, classes=1000, chunk_size=None,
                                  remat=remat)
    cfg, _, step, state = train_step.abstract_step(settings, mixer, grid, batch, impl,
                                                   grad_accum_steps)
    batch_arrays = {"label": jax.ShapeDtypeStruct((batch,), jnp.int32),
                    "tokens": jax.ShapeDtypeStruct((batch, cfg.num_tokens), jnp.int32)}
    t0 = time.perf_counter()
    compiled = step.lower(abstract(state, device), abstract(batch_arrays, device)).compile()
    compile_s = time.perf_counter() - t0
    text = compiled.as_text()
    suffix = (f"_accum{grad_accum_steps}" if grad_accum_steps > 1 else "") + (
        f"_remat_{remat}" if remat != "none" else "")
    _save(hlo_dir, f"train_{mixer}_{impl}_{grid}_{batch}{suffix}", text)
    total = summary(traffic(text))
    return dict(mixer=mixer, impl=impl, grid=grid, pixels=16 * grid, batch=batch,
                grad_accum_steps=grad_accum_steps, remat=remat,
                compile_s=compile_s, bytes=total["bytes"], launches=total["launches"],
                floor_ms=1e3 * total["bytes"] / bw, cudnn_attention="__cudnn$fmha" in text,
                **memory_row(compiled, usable))


def node_rows(args, usable: float, result: dict) -> int:
    """The `node` stage: the trainer's step and the sampler of `--config` on `--node_hosts`
    hosts of `--node_gpus` GPUs, on the config's mesh (FSDP over every GPU for
    configs/imagenet256.py), as launch/gpu/slurm.sh runs them: each program must compile,
    fit in `usable` bytes per GPU, and (the sampler) pass the HLO check at the rows one GPU
    holds. The programs are benchmarks/tpu_aot.py's (`train_row`, `sample_row`), built
    from the config file by the trainer's own functions. Returns the rows that failed."""
    import tpu_aot

    try:
        settings = tpu_aot.run_settings(args.config or tpu_aot.CONFIG)
    except ImportError as err:  # the bare GPU image: no ml_collections, grain, ...
        sys.exit(f"the node stage reads a config file with the trainer's code: pip install -r "
                 f"requirements.txt ({err})")
    devices = gpu_devices(args.target, args.node_gpus, args.node_hosts)
    result["info"]["node"] = (f"{args.node_hosts} host(s) x {args.node_gpus} "
                              f"{devices[0].device_kind}")
    batch = settings[2]
    print(f"\nnode: {result['info']['node']}, {usable / 1e9:.1f} GB usable per GPU")
    failed = 0

    def report(label: str, row: dict) -> None:
        nonlocal failed
        result["node"].append(row)
        failed += tpu_aot.failed(row)
        print(f"{label:42s} {tpu_aot.verdict(row)}", flush=True)
        write_json(args.out, result, quiet=True)

    for grid, rows, mixer, impl in tpu_aot.train_cases(batch, [16, 32], ["lasad", "softmax"]):
        report(f"train {16 * grid}px batch {rows} {mixer} {impl}",
               tpu_aot.train_row(devices, usable, settings, grid, rows, mixer, impl))
    for mixer in ("lasad", "softmax"):
        report(f"sample 256px batch {args.batch} {mixer}",
               tpu_aot.sample_row(devices, usable, settings, 16, args.batch, mixer))
    return failed


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--target", default=TARGET, help="GpuTargetConfigProto text file")
    p.add_argument("--memory_fraction", type=float, default=MEMORY_FRACTION,
                   help="share of the device's memory JAX's allocator takes "
                        "(XLA_PYTHON_CLIENT_MEM_FRACTION; benchmarks/device_check.sh sets "
                        f"{MEMORY_FRACTION}): a row whose peak exceeds it is reported")
    p.add_argument("--stages", default=",".join(DEFAULT_STAGES),
                   help=f"comma-separated, from {STAGES}")
    p.add_argument("--node_gpus", type=int, default=8, help="node stage: GPUs per host")
    p.add_argument("--node_hosts", type=int, default=1,
                   help="node stage: hosts (one JAX process each, as launch/gpu/slurm.sh)")
    p.add_argument("--config", default=None,
                   help="node stage: a generator config file (default configs/imagenet256.py)")
    p.add_argument("--presets", nargs="+", default=["B", "L"])
    p.add_argument("--grids", nargs="+", type=int, default=[16, 24, 32])
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--tokens", nargs="+", type=int, default=[256, 1024, 4096, 16384])
    p.add_argument("--chunks", nargs="+", type=int, default=[1024, 2048, 4096])
    p.add_argument("--out", default="benchmarks/results/gpu_aot_h200.json")
    p.add_argument("--hlo_dir", default=None,
                   help="also write each compiled program's HLO text here, to read it with "
                        "benchmarks/hlo_traffic.py")
    args = p.parse_args()
    stages = args.stages.split(",")
    bad = [s for s in stages if s not in STAGES]
    if bad:
        sys.exit(f"--stages: unknown {bad}; valid: {', '.join(STAGES)}")
    for flag in ("node_gpus", "node_hosts"):
        if getattr(args, flag) < 1:
            sys.exit(f"--{flag} must be at least 1, got {getattr(args, flag)}")
    if not 0 < args.memory_fraction <= 1:
        sys.exit(f"--memory_fraction must be in (0, 1], got {args.memory_fraction}")
    device = gpu_device(args.target)
    bw = target_figure(args.target, "memory_bandwidth")
    usable = args.memory_fraction * target_figure(args.target, "device_memory_size")
    result = dict(info=run_info(compiled_for=device.device_kind,
                                target=os.path.relpath(args.target),
                                hbm_bytes_per_s=bw, usable_bytes=usable,
                                memory_fraction=args.memory_fraction,
                                note="compiled only: bytes and launches of the GPU program, "
                                     "its peak memory, no timings"),
                  decode=[], ops=[], train=[], memory=[], node=[])
    problems = 0
    too_big = []

    def fit(row: dict, label: str) -> str:
        if row["fits"] is False:
            too_big.append(label)
        return {True: "", False: "  DOES NOT FIT", None: "  (no memory analysis)"}[row["fits"]]

    print(f"usable device memory: {usable / 1e9:.1f} GB ({args.memory_fraction} of "
          f"{os.path.basename(args.target)}'s)")
    if "decode" in stages:
        print(f"{'row':30s} {'GB/token':>9s} {'launches':>9s} {'floor ms/tok':>12s} "
              f"{'img/s ceiling':>13s} {'peak GB':>8s}  hlo check")
        for grid in args.grids:
            for preset in args.presets:
                for mixer, sd, impl in DECODE_ROWS:
                    row = decode_row(device, preset, grid, mixer, sd, impl, args.batch, bw,
                                     usable, args.hlo_dir)
                    result["decode"].append(row)
                    problems += len(row["hlo_problems"])
                    label = f"{preset} {16 * grid}px {mixer}" + (
                        f" {impl} {SHORT[sd]}" if mixer == "lasad" else "")
                    found = row["hlo_problems"]
                    check = "ok" if not found else f"{len(found)} problems, e.g. {found[0][:150]}"
                    print(f"{label:30s} {row['bytes_per_token'] / 1e9:9.3f} "
                          f"{row['launches_per_token']:9d} {row['floor_ms_per_token']:12.3f} "
                          f"{row['ceiling_images_per_s']:13.1f} {gb(row['peak_bytes']):8.2f}  "
                          f"{check}{fit(row, 'decode ' + label)}", flush=True)
                    write_json(args.out, result, quiet=True)
    if "ops" in stages:
        print(f"\n{'T':>6s} {'impl':8s} {'chunk':>6s} {'GB':>8s} {'launches':>9s} "
              f"{'floor ms':>9s} {'temp GB':>8s} {'peak GB':>8s}")
        for tokens in args.tokens:
            for impl in ("chunked", "pallas"):
                done = False
                for chunk in args.chunks:
                    if done:
                        break
                    done = chunk >= tokens  # longer chunks compile the same program
                    row = ops_row(device, tokens, impl, chunk, bw, usable, args.hlo_dir)
                    result["ops"].append(row)
                    print(f"{tokens:6d} {impl:8s} {chunk:6d} {row['bytes'] / 1e9:8.3f} "
                          f"{row['launches']:9d} {row['floor_ms']:9.3f} "
                          f"{gb(row['temp_bytes']):8.2f} {gb(row['peak_bytes']):8.2f}"
                          f"{fit(row, f'ops T={tokens} {impl} chunk {chunk}')}", flush=True)
                    write_json(args.out, result, quiet=True)
    if "train" in stages:
        print(f"\n{'LASADGen-L step':30s} {'GB':>8s} {'launches':>9s} {'floor ms':>9s} "
              f"{'temp GB':>8s} {'peak GB':>8s}  attention")
        for grid, batch in ((16, 64), (32, 16)):
            for mixer, impl in (("lasad", "auto"), ("lasad", "pallas"), ("softmax", "auto")):
                row = train_row(device, mixer, impl, grid, batch, bw, usable, args.hlo_dir)
                result["train"].append(row)
                label = f"{16 * grid}px/{batch} {mixer}" + (f" {impl}" if mixer == "lasad" else "")
                attention = ("cuDNN" if row["cudnn_attention"] else "XLA") if mixer == "softmax" \
                    else ""
                print(f"{label:30s} {row['bytes'] / 1e9:8.1f} {row['launches']:9d} "
                      f"{row['floor_ms']:9.1f} {gb(row['temp_bytes']):8.1f} "
                      f"{gb(row['peak_bytes']):8.1f}  {attention}"
                      f"{fit(row, 'train ' + label)}", flush=True)
                write_json(args.out, result, quiet=True)
    if "memory" in stages:
        print(f"\n{'LASADGen-L step, one GPU':40s} {'GB':>8s} {'temp GB':>8s} {'peak GB':>8s}")
        for grid, batch, accum, remat in MEMORY_ROWS:
            for mixer in ("lasad", "softmax"):
                row = train_row(device, mixer, "auto", grid, batch, bw, usable, args.hlo_dir,
                                grad_accum_steps=accum, remat=remat)
                result["memory"].append(row)
                label = f"{16 * grid}px/{batch} {mixer}, {accum} x {batch // accum}" + (
                    f", remat {remat}" if remat != "none" else "")
                print(f"{label:40s} {row['bytes'] / 1e9:8.1f} {gb(row['temp_bytes']):8.1f} "
                      f"{gb(row['peak_bytes']):8.1f}"
                      f"{'  DOES NOT FIT' if row['fits'] is False else ''}", flush=True)
                write_json(args.out, result, quiet=True)
    node_failed = node_rows(args, usable, result) if "node" in stages else 0
    write_json(args.out, result)
    failures = []
    if node_failed:
        failures.append(f"{node_failed} node program(s) did not compile, fit or pass the HLO "
                        "check")
    if problems:
        failures.append(f"{problems} HLO check problem(s) in the GPU-compiled sampler")
    if too_big:
        failures.append(f"{len(too_big)} program(s) larger than the usable "
                        f"{usable / 1e9:.1f} GB: {', '.join(too_big)}")
    if failures:
        sys.exit("; ".join(failures) + " (see above)")


if __name__ == "__main__":
    main()
