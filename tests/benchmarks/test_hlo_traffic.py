"""benchmarks/hlo_traffic.py counts what each kernel of a compiled program moves: the
counts are checked on hand-written HLO, where every byte is known, and on a program XLA
compiles here."""

from __future__ import annotations

import importlib.util
import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest
from hlo_traffic import nbytes, summary, traffic  # benchmarks/ (conftest puts it on the path)

from tests.benchmarks.helpers import LOOP_HLO
from tests.helpers import DEFAULT_PIPELINE


def test_shape_bytes():
    assert nbytes("f32[100,64]{1,0}") == 25600
    assert nbytes("(bf16[8,4], s32[], pred[3])") == 64 + 4 + 3


def test_slices_in_place_updates_and_loops_on_known_hlo():
    kernels = {k.name: k for k in traffic(LOOP_HLO)}
    assert set(kernels) == {"twice", "row", "new"}
    twice, row, new = kernels["twice"], kernels["row"], kernels["new"]
    assert (twice.runs, twice.read, twice.written) == (1, 25600, 25600)
    assert (row.runs, row.read, row.written) == (10, 256 + 4, 256)  # one row and the index
    assert (new.runs, new.read, new.written) == (10, 256 + 4, 256)  # in place: the row only
    assert new.loop == "loop"
    whole = summary(list(kernels.values()))
    assert whole["bytes"] == 2 * 25600 + 10 * (260 + 256) * 2 and whole["launches"] == 21
    step = summary(list(kernels.values()), loop=True)  # per iteration of the loop
    assert step["bytes"] == 2 * (260 + 256) and step["launches"] == 2


NESTED_SLICE_HLO = """
HloModule nested

%one_head (p0: f32[64,192]) -> f32[64,64] {
  %p0 = f32[64,192]{1,0} parameter(0)
  %cols = f32[64,128]{1,0} slice(%p0), slice={[0:64], [64:192]}
  %heads = f32[64,2,64]{2,1,0} bitcast(%cols)
  %head = f32[64,1,64]{2,1,0} slice(%heads), slice={[0:64], [1:2], [0:64]}
  %flat = f32[64,64]{1,0} bitcast(%head)
  ROOT %neg = f32[64,64]{1,0} negate(%flat)
}

%both_heads (p0: f32[64,192]) -> f32[64,128] {
  %p0 = f32[64,192]{1,0} parameter(0)
  %cols = f32[64,128]{1,0} slice(%p0), slice={[0:64], [64:192]}
  ROOT %neg = f32[64,128]{1,0} negate(%cols)
}

%copy_head (p0: f32[64,192]) -> f32[64,64] {
  %p0 = f32[64,192]{1,0} parameter(0)
  ROOT %head = f32[64,64]{1,0} slice(%p0), slice={[0:64], [128:192]}
}

ENTRY %main (x: f32[64,192]) -> (f32[64,64], f32[64,128], f32[64,64]) {
  %x = f32[64,192]{1,0} parameter(0)
  %a = f32[64,64]{1,0} fusion(%x), kind=kLoop, calls=%one_head
  %b = f32[64,128]{1,0} fusion(%x), kind=kLoop, calls=%both_heads
  %c = f32[64,64]{1,0} fusion(%x), kind=kLoop, calls=%copy_head
  ROOT %t = (f32[64,64]{1,0}, f32[64,128]{1,0}, f32[64,64]{1,0}) tuple(%a, %b, %c)
}
"""


def test_a_slice_of_a_slice_reads_the_inner_one():
    """One head's part of a column block of a projection (as XLA fuses q out of a wider
    fused projection): the fusion reads that part, not the block; a fusion using the whole
    block reads the block; a fusion that is a slice (a copy of one head) reads the slice."""
    kernels = {k.name: k for k in traffic(NESTED_SLICE_HLO)}
    assert (kernels["a"].read, kernels["a"].written) == (64 * 64 * 4, 64 * 64 * 4)
    assert (kernels["b"].read, kernels["b"].written) == (64 * 128 * 4, 64 * 128 * 4)
    assert (kernels["c"].read, kernels["c"].written) == (64 * 64 * 4, 64 * 64 * 4)


def test_a_compiled_elementwise_program():
    """One fused elementwise kernel over 1024 float32 numbers: 4 KiB in, 4 KiB out."""
    text = jax.jit(lambda x: jnp.tanh(x) * 2.0 + 1.0).lower(
        jnp.zeros((1024,), jnp.float32)).compile(DEFAULT_PIPELINE).as_text()
    total = summary(traffic(text))
    assert total["launches"] == 1 and total["bytes"] == 2 * 4096, total


def test_gpu_aot_says_what_it_needs(tmp_path):
    """Without JAX's CUDA plugin (CI), benchmarks/gpu_aot.py stops with one line naming
    the package to install, and rejects unknown stages naming the valid ones."""
    script = pathlib.Path(__file__).resolve().parents[2] / "benchmarks" / "gpu_aot.py"
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    bad = subprocess.run([sys.executable, str(script), "--stages", "decode,fast"], env=env,
                         capture_output=True, text=True)
    assert bad.returncode == 1 and "valid: decode, ops" in bad.stderr
    bad = subprocess.run([sys.executable, str(script), "--stages", "node", "--node_gpus", "0"],
                         env=env, capture_output=True, text=True)
    assert bad.returncode == 1 and "--node_gpus must be at least 1, got 0" in bad.stderr
    if importlib.util.find_spec("jax_plugins") is not None:
        pytest.skip("the CUDA plugin is installed here: gpu_aot.py would compile")
    out = tmp_path / "aot.json"
    run = subprocess.run([sys.executable, str(script), "--out", str(out)], env=env,
                         capture_output=True, text=True)
    assert run.returncode == 1 and "jax[cuda12]" in run.stderr and not out.exists()


def test_named_pallas_kernels_take_the_callers_figures():
    """A Triton custom call is opaque: all operands and results count, unless the caller
    describes the kernel by its name (here: one row of an aliased [100, 64] state)."""
    text = """
HloModule opaque

ENTRY %main (s: f32[100,64], x: f32[64]) -> f32[100,64] {
  %s = f32[100,64]{1,0} parameter(0)
  %x = f32[64]{0} parameter(1)
  ROOT %k = f32[100,64]{1,0} custom-call(%s, %x), custom_call_target="__gpu$xla.gpu.triton", \
output_to_operand_aliasing={{}: (0, {})}, backend_config={grid_x = 100 : i32, name = "row_kernel"}
}
"""
    [whole] = traffic(text)
    assert (whole.read, whole.written) == (25600 + 256, 25600)

    def one_row(operands, results, shapes):
        assert shapes[0].startswith("f32[100,64]")
        return operands[0] // 100 + operands[1], results[0] // 100

    [row] = traffic(text, {"row_kernel": one_row})
    assert (row.read, row.written, row.kind) == (256 + 256, 256, "__gpu$xla.gpu.triton")
    [other] = traffic(text, {"another_kernel": one_row})
    assert other.read == whole.read


def _inner_square(x):
    return jnp.tanh(x) * x


def test_bytes_by_source_function():
    """Each kernel's bytes go to the innermost function of its recorded stack inside the
    named package (here: this test module's folder); the split adds up to the total."""
    from hlo_traffic import by_source

    def outer(x, y):
        return _inner_square(x).sum() + (y * 3.0).sum()

    lowered = jax.jit(outer).lower(jnp.zeros((4096,), jnp.float32),
                                   jnp.zeros((1024,), jnp.float32))
    text = lowered.compile(DEFAULT_PIPELINE).as_text()
    kernels = traffic(text)
    sources = by_source(text, kernels, package="tests/benchmarks/")
    assert sum(sources.values()) == summary(kernels)["bytes"]
    # XLA may fuse both sums into one kernel; it is attributed to a function of this module.
    named = {k: v for k, v in sources.items() if k.startswith("test_hlo_traffic.py:")}
    assert named and max(named.values()) >= 4 * 4096, sources


def test_gpu_aot_names_a_missing_target(tmp_path):
    script = pathlib.Path(__file__).resolve().parents[2] / "benchmarks" / "gpu_aot.py"
    run = subprocess.run([sys.executable, str(script), "--target", str(tmp_path / "no.txtpb"),
                          "--out", str(tmp_path / "aot.json")],
                         env={**os.environ, "JAX_PLATFORMS": "cpu"}, capture_output=True,
                         text=True)
    assert run.returncode == 1 and "--target: no such file" in run.stderr


def test_fused_decode_kernel_bytes():
    """gpu_aot's rule for the fused decoding kernel (`lasad_decode_token`), against the
    bytes it moves counted by hand: one column of the aliased `[w, B*H, Dk, Dv]` state read
    and written, both aliased rings read whole and written one slot, the packed q/k/v
    input read, `o` written."""
    import gpu_aot

    w, rows, d, slots = 16, 96, 64, 33
    state, ring = w * rows * d * d * 4, rows * slots * d * 2
    packed, o, at = rows * 4 * d * 4, rows * d * 4, 3 * 4
    shapes = ["s32[3]", f"f32[{w},{rows},{d},{d}]", f"bf16[{rows},{slots},{d}]",
              f"bf16[{rows},{slots},{d}]", f"f32[{rows},4,{d}]"]
    read, written = gpu_aot._decode_token_bytes([at, state, ring, ring, packed],
                                                [state, ring, ring, o], shapes)
    assert read == at + state // w + 2 * ring + packed
    assert written == state // w + 2 * rows * d * 2 + o


def test_aot_peak_memory_counts_a_donated_buffer_once():
    """The compile-only benchmarks' peak (`generation.memory_row`): arguments + outputs +
    temporaries, an output written into a donated argument counted once; a row fits when
    that peak is at most the usable bytes."""
    import generation

    x = jnp.zeros((256, 1024), jnp.float32)  # 1 MiB
    donated = jax.jit(lambda a: a * 2.0, donate_argnums=0).lower(x).compile()
    kept = jax.jit(lambda a: a * 2.0).lower(x).compile()
    one = x.size * 4
    row = generation.memory_row(donated, usable=one)
    assert row["peak_bytes"] - row["temp_bytes"] == one and row["fits"] is True
    row = generation.memory_row(kept, usable=one)
    assert row["peak_bytes"] - row["temp_bytes"] == 2 * one and row["fits"] is False


def test_gpu_aot_rejects_a_bad_memory_fraction(tmp_path):
    script = pathlib.Path(__file__).resolve().parents[2] / "benchmarks" / "gpu_aot.py"
    for bad in ("0", "1.5"):
        run = subprocess.run([sys.executable, str(script), "--memory_fraction", bad,
                              "--out", str(tmp_path / "aot.json")],
                             env={**os.environ, "JAX_PLATFORMS": "cpu"}, capture_output=True,
                             text=True)
        assert run.returncode == 1 and "--memory_fraction must be in (0, 1]" in run.stderr


def test_tpu_aot_says_what_it_needs(tmp_path):
    """Without libtpu (CI), benchmarks/tpu_aot.py stops with one line naming the package;
    bad stages and mixers are refused naming the valid ones; nothing is written."""
    script = pathlib.Path(__file__).resolve().parents[2] / "benchmarks" / "tpu_aot.py"
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    out = tmp_path / "aot.json"
    for argv, message in ((["--stages", "train,fast"], "valid: train, sample, ops"),
                          (["--mixers", "mamba"], "valid: lasad, softmax"),
                          (["--config", str(tmp_path / "no.py")], "no such file")):
        bad = subprocess.run([sys.executable, str(script), *argv, "--out", str(out)], env=env,
                             capture_output=True, text=True)
        assert bad.returncode == 1 and message in bad.stderr, bad.stderr[-500:]
    if importlib.util.find_spec("libtpu") is not None:
        pytest.skip("libtpu is installed here: tpu_aot.py would compile")
    run = subprocess.run([sys.executable, str(script), "--out", str(out)], env=env,
                         capture_output=True, text=True)
    assert run.returncode == 1 and "jax[tpu]" in run.stderr and not out.exists()


def test_tpu_aot_reads_the_trainers_config():
    """The train rows use the config file's model, mesh, batch and recipe, parsed by the
    same typed blocks as the trainer (configs/imagenet256.py: LASADGen-L, bf16, FSDP)."""
    import tpu_aot

    mesh, fields, batch, optimizer, train = tpu_aot.run_settings(tpu_aot.CONFIG)
    assert (mesh.data, mesh.fsdp, mesh.tensor) == (1, -1, 1) and batch == 256
    model = tpu_aot.model_config(fields, 32, mixer="softmax")
    assert (model.num_layers, model.dim, model.dtype) == (24, 1024, "bfloat16")
    assert model.grid == (32, 32) and model.mixer == "softmax" and model.vocab_size == 16384
    assert (optimizer.b2, train.class_dropout) == (0.95, 0.1)


def test_tpu_aot_calls_an_hbm_refusal_a_misfit():
    import tpu_aot

    hbm = ("JaxRuntimeError: RESOURCE_EXHAUSTED: Ran out of memory on HBM, the total memory "
           "required for HLO temporaries (16.11G) exceeds available HBM (15.75G).")
    vmem = "JaxRuntimeError: RESOURCE_EXHAUSTED: E1001: CompileTimeScopedVmemOom:"
    assert tpu_aot.out_of_memory(hbm) and not tpu_aot.out_of_memory(vmem)
    row = dict(error=hbm, fits=False, compile_s=1.0)
    assert tpu_aot.verdict(row).startswith("DOES NOT FIT") and tpu_aot.failed(row)
    assert tpu_aot.verdict(dict(row, error=vmem, fits=None)).startswith("DOES NOT COMPILE")


def test_tpu_aot_prints_on_chip_moves_apart_from_findings():
    import tpu_aot

    row = dict(error=None, fits=True, peak_bytes=2 ** 30, compile_s=3.0, hlo_loops=1,
               hlo_findings=0, hlo_problems=[], hlo_moves=8, hlo_moves_in_bytes=4_325_376,
               hlo_moves_out_bytes=4_325_376, column_traffic_bytes=201_326_592)
    text = tpu_aot.verdict(row)
    assert "HLO check on 1 loop(s): ok" in text
    assert "8 on-chip moves of arrays up to a column: 4.3 MB in, 4.3 MB out per token" in text
    assert "against 201 MB of column states" in text and not tpu_aot.failed(row)
    found = dict(row, hlo_findings=1, hlo_problems=["body: %copy-start copies a whole k"],
                 hlo_moves=0)
    assert "1 findings, e.g. body: %copy-start" in tpu_aot.verdict(found)
    assert "on-chip" not in tpu_aot.verdict(found) and not tpu_aot.failed(found)


def test_aot_rows_count_the_platforms_pallas_kernels():
    """A TPU row counts Mosaic kernels, a GPU row (gpu_aot.py's node stage) Triton ones."""
    import tpu_aot

    text = ('%a = f32[8] custom-call(%x), custom_call_target="tpu_custom_call"\n'
            '%b = f32[8] custom-call(%x), custom_call_target="__gpu$xla.gpu.triton"\n'
            '%c = f32[8] custom-call(%b), custom_call_target="__gpu$xla.gpu.triton"\n')
    assert tpu_aot.pallas_kernels(text, "tpu") == {"mosaic_kernels": 1}
    assert tpu_aot.pallas_kernels(text, "gpu") == {"triton_kernels": 2}
    row = dict(error=None, fits=True, peak_bytes=2 ** 30, compile_s=1.0, triton_kernels=72)
    assert "peak   1.00 GiB, 72 Triton kernels (1 s)" == tpu_aot.verdict(row)
