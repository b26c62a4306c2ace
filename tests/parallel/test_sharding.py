"""Sharding: mesh resolution, logical-axis rules, sharded state, and the multi-device
equivalences (one step on three meshes, resume on another mesh, sharded sampling).

The multi-device checks need 8 devices, fixed when JAX starts, so they run once in a
subprocess (tests/parallel/multidevice/sharding_checks.py) with 8 simulated CPU devices; the tests
here assert on what it measured.
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

from lasad_jax.models import LASADGen, ModelConfig
from lasad_jax.models.config import MIXERS
from lasad_jax.parallel import (MeshConfig, build_mesh, global_batch, local_batch_size,
                                mesh_shape, spec_for, state_shardings)
from lasad_jax.parallel.batch import check_shards_within_processes
from lasad_jax.parallel.rules import LOGICAL_RULES
from lasad_jax.validation import block_from_mapping

ROOT = pathlib.Path(__file__).resolve().parents[2]
MESH_222 = {"data": 2, "fsdp": 2, "tensor": 2}


@pytest.mark.parametrize("config, devices, want", [
    (None, 8, (8, 1, 1)),
    ({"data": -1, "fsdp": 1, "tensor": 1}, 8, (8, 1, 1)),
    ({"data": 2, "fsdp": -1, "tensor": 2}, 8, (2, 2, 2)),
    ({"fsdp": -1}, 256, (1, 256, 1)),  # an axis a config leaves out is 1
    ({"data": 2, "fsdp": 4}, 8, (2, 4, 1)),
])
def test_mesh_shape_fills_one_axis(config, devices, want):
    mesh = None if config is None else block_from_mapping(MeshConfig, "mesh", config)
    assert mesh_shape(mesh, devices) == want


@pytest.mark.parametrize("config, match", [
    ({"data": -1, "fsdp": -1}, "at most one axis may be -1"),
    ({"data": 3, "fsdp": -1}, "fixed axes' product 3 must divide"),
    ({"data": 2, "fsdp": 2}, "has 4 devices, but JAX sees 8"),
    ({"data": 0}, r"mesh.data must be a positive int or -1"),
    ({"data": 2.0}, r"mesh.data must be a positive int"),
    ({"model": 2}, r"unknown fields \['model'\]; valid fields: \['data', 'fsdp', 'tensor'\]"),
])
def test_mesh_shape_errors_name_the_field(config, match):
    with pytest.raises(ValueError, match=match):
        mesh_shape(block_from_mapping(MeshConfig, "mesh", config), 8)


def test_spec_for_maps_logical_names_and_replicates_what_does_not_divide():
    assert spec_for(("embed", "mlp"), (64, 256), MESH_222) == P("fsdp", "tensor")
    assert spec_for(("heads", "embed"), (64, 64), MESH_222) == P("tensor", "fsdp")
    # 17 vocabulary rows do not split over tensor=2: that axis stays whole.
    assert spec_for(("vocab", "embed"), (17, 64), MESH_222) == P(None, "fsdp")
    assert spec_for(("batch", None), (16, 63), MESH_222) == P(("data", "fsdp"), None)
    # Size-1 mesh axes are dropped; a mesh axis is used once per array.
    assert spec_for(("embed", "mlp"), (64, 256), {"data": 8, "fsdp": 1, "tensor": 1}) == P(
        None, None)
    assert spec_for(("embed", "embed"), (64, 64), MESH_222) == P("fsdp", None)
    with pytest.raises(ValueError, match="logical axis 'width' has no rule"):
        spec_for(("width",), (4,), MESH_222)
    with pytest.raises(ValueError, match="do not match shape"):
        spec_for(("embed",), (4, 4), MESH_222)


def test_a_mesh_that_would_not_split_the_model_is_refused():
    """fsdp must divide the width and tensor the heads and MLP units: otherwise spec_for
    keeps those weights whole on every device (the full training state, for fsdp)."""
    from lasad_jax.parallel.rules import split_problems

    three_b = dict(dim=3200, num_heads=32, mlp_hidden=8704)  # the 3B preset
    (line,) = split_problems(MeshConfig(data=1, fsdp=-1), 256, **three_b)
    assert line.startswith("mesh.fsdp=256 does not divide model.dim=3200")
    assert split_problems(MeshConfig(data=2, fsdp=-1), 256, **three_b) == []  # 128 | 3200
    large = dict(dim=1024, num_heads=16, mlp_hidden=2816)  # L
    heads, mlp = split_problems(MeshConfig(data=1, fsdp=8, tensor=3), 24, **large)
    assert heads.startswith("mesh.tensor=3 does not divide model.num_heads (16)")
    assert mlp.startswith("mesh.tensor=3 does not divide the MLP's hidden size (2816)")
    assert split_problems(MeshConfig(data=1, fsdp=8, tensor=2), 16, **large) == []
    assert split_problems(MeshConfig(data=-1), 7, **large) == []  # data parallel only
    assert split_problems(MeshConfig(data=2), 7, **large) == []  # the mesh's own problem


@pytest.mark.parametrize("mixer", MIXERS)
def test_every_parameter_names_its_axes(mixer):
    """A parameter without `logical_axes` would silently stay replicated on every device."""
    cfg = ModelConfig(vocab_size=17, grid=(4, 4), num_classes=10, dim=32, num_heads=2,
                      num_layers=1, mixer=mixer, gate_rank=8)
    state = nnx.state(nnx.eval_shape(lambda: LASADGen(cfg, rngs=nnx.Rngs(0))), nnx.Param)
    flat = jax.tree_util.tree_flatten_with_path(
        state, is_leaf=lambda x: isinstance(x, nnx.Variable))[0]
    for path, var in flat:
        names = var.get_metadata().get("logical_axes")
        assert names is not None, jax.tree_util.keystr(path)
        assert len(names) == var.get_value().ndim, jax.tree_util.keystr(path)
        assert all(n is None or n in LOGICAL_RULES for n in names)


def test_state_shardings_and_global_batch_on_one_device():
    mesh = build_mesh()
    cfg = ModelConfig(vocab_size=17, grid=(4, 4), num_classes=10, dim=32, num_heads=2,
                      num_layers=1, gate_rank=8)
    params = nnx.state(LASADGen(cfg, rngs=nnx.Rngs(0)), nnx.Param)
    shardings = state_shardings(params, mesh)
    assert jax.tree.structure(shardings) == jax.tree.structure(params)
    assert all(s.mesh == mesh for s in jax.tree.leaves(shardings))
    batch = global_batch({"tokens": np.arange(12).reshape(4, 3), "label": np.arange(4)}, mesh)
    np.testing.assert_array_equal(batch["tokens"], np.arange(12).reshape(4, 3))
    assert local_batch_size(4, mesh) == 4


def test_a_batch_shard_spread_over_processes_is_refused():
    # Two processes of two devices each (device -> process, axes data x fsdp x tensor).
    spread = np.array([0, 0, 1, 1]).reshape(1, 1, 4)  # tensor = 4: one shard, two hosts
    with pytest.raises(ValueError, match=r"^config.batch_size: .* processes \[0, 1\] "
                       r"\(config.mesh.tensor=4 .* 2 devices each\).* at most 2"):
        check_shards_within_processes(spread, "config.batch_size")
    interleaved = np.array([0, 1, 0, 1]).reshape(2, 1, 2)  # tensor = 2, but across hosts
    with pytest.raises(ValueError, match="batch shard 0"):
        check_shards_within_processes(interleaved, "config.batch_size")
    # Each shard on one host, in either data-parallel axis: accepted.
    check_shards_within_processes(np.array([0, 0, 1, 1]).reshape(2, 1, 2), "x")
    check_shards_within_processes(np.array([0, 0, 1, 1]).reshape(1, 4, 1), "x")


@pytest.fixture(scope="module")
def measured(tmp_path_factory):
    # A module fixture runs once per pytest-xdist worker that needs it: the tests that
    # read it are one `xdist_group`, so one worker runs them and the subprocess (2-4
    # minutes on 2 cores) runs once (`--dist loadgroup` in pyproject.toml's addopts).
    out = tmp_path_factory.mktemp("multidevice") / "out.json"
    # Added to the run's XLA_FLAGS (tests/conftest.py sets one), not in place of them.
    flags = os.environ.get("XLA_FLAGS", "")
    env = dict(os.environ, JAX_PLATFORMS="cpu",
               XLA_FLAGS=f"{flags} --xla_force_host_platform_device_count=8".strip())
    script = ROOT / "tests/parallel/multidevice/sharding_checks.py"
    proc = subprocess.run([sys.executable, str(script), str(out)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    # The partitioner falls back to replicating a tensor when it cannot reshard it
    # efficiently; the model's layout is chosen so that it never has to.
    assert "Involuntary full rematerialization" not in proc.stderr
    return json.loads(out.read_text())


@pytest.mark.slow
@pytest.mark.multidevice
@pytest.mark.xdist_group("multidevice")
@pytest.mark.parametrize("mesh", ["8x1x1", "2x4x1", "2x2x2"])
def test_one_step_on_a_mesh_equals_one_device(measured, mesh):
    assert measured["devices"] == 8
    r = measured["one_step"][mesh]
    np.testing.assert_allclose(r["loss"], r["base_loss"], rtol=1e-5, atol=0)
    assert r["loss"][0] != r["loss"][1]  # the first step really changed the weights
    assert r["max_param_diff"] < 1e-5 and r["max_ema_diff"] < 1e-5


@pytest.mark.slow
@pytest.mark.multidevice
@pytest.mark.xdist_group("multidevice")
@pytest.mark.parametrize("run", ["8x1x1/2", "2x2x2/2"])
def test_gradient_accumulation_on_a_mesh_moves_no_example(measured, run):
    """The batch in 2 micro-batches on a mesh: the one-device step's update, and no
    collective on the tokens or labels (int32) in the partitioned program. Splitting the
    batch into contiguous halves instead makes XLA exchange examples between devices
    (all-to-all and collective-permute of s32 arrays on both meshes), and this fails."""
    r = measured["accumulation"][run]
    np.testing.assert_allclose(r["loss"], r["base_loss"], rtol=1e-6)
    np.testing.assert_allclose(r["grad_norm"], r["base_grad_norm"], rtol=1e-5)
    assert r["max_param_diff"] < 1e-5
    moved = [t for types in r["collectives"].values() for t in types if t[0] in "su"]
    assert not moved and not r["collectives"]["all-to-all"], r["collectives"]
    assert r["collectives"]["all-reduce"]  # gradients are reduced: the scan was partitioned


@pytest.mark.slow
@pytest.mark.multidevice
@pytest.mark.xdist_group("multidevice")
def test_fsdp_and_tensor_axes_really_split_the_state(measured):
    steps = measured["one_step"]
    assert steps["8x1x1"]["w_gate_spec"] == "P(None, None)"  # pure data parallel
    assert steps["2x4x1"]["w_gate_spec"] == "P('fsdp', None)"
    assert steps["2x4x1"]["w_gate_shard"] == [16, 256]          # 64 / 4 rows per device
    assert steps["2x2x2"]["w_gate_spec"] == "P('fsdp', 'tensor')"
    assert steps["2x2x2"]["w_gate_shard"] == [32, 128]
    # Adam's moments follow the parameters' layout.
    assert steps["8x1x1"]["opt_leaves_sharded"] == 0
    assert steps["2x2x2"]["opt_leaves_sharded"] > 20


@pytest.mark.slow
@pytest.mark.multidevice
@pytest.mark.xdist_group("multidevice")
def test_resume_on_another_mesh_continues_the_run(measured):
    """Saved at step 5 on (8,1,1), resumed on (2,2,2): the next 5 losses (and the final
    validation) match a run that never stopped."""
    losses = measured["resume"]["loss"]
    assert sorted(map(int, losses["split"])) == list(range(1, 11))
    for step in map(str, range(6, 11)):
        assert abs(losses["split"][step] - losses["full"][step]) < 1e-5, step
    val = measured["resume"]["val_bits_per_token_ema"]
    assert abs(val["split"]["10"] - val["full"]["10"]) < 1e-5


@pytest.mark.slow
@pytest.mark.multidevice
@pytest.mark.xdist_group("multidevice")
def test_sharded_sampling_draws_the_same_images(measured):
    sampling = measured["sampling"]
    assert sampling["distinct_tokens"] > 5  # not a degenerate model
    assert sampling["8x1x1"] == sampling["2x4x1"] == sampling["2x2x2"] == 0
    # The weights' fingerprint is the same however the weights are sharded.
    for shape, found in sampling["fingerprint"].items():
        assert found["same"], shape
    assert max(f["sharded_arrays"] for f in sampling["fingerprint"].values()) > 0


@pytest.mark.slow
@pytest.mark.multidevice
@pytest.mark.xdist_group("multidevice")
def test_pallas_kernels_run_per_shard_on_a_mesh(measured):
    """`impl="pallas"` on a 2x2x2 mesh equals one device (interpreted on CPU), and the
    same program lowers for TPU: without `parallel.rules.per_shard` Mosaic refuses it
    ("Mosaic kernels cannot be automatically partitioned")."""
    r = measured["pallas_mesh"]
    assert r["tpu_lowering"]["error"] is None, r["tpu_lowering"]["error"]
    assert r["tpu_lowering"]["kernels"] >= 3  # forward, and the backward's kernels
    assert r["output"] < 1e-5
    assert {"['row_logit'].value", "['col_logit'].value", "['qkv']['kernel'].value"} <= set(
        r["grads"])
    assert max(r["grads"].values()) < 1e-5, r["grads"]


@pytest.mark.slow
@pytest.mark.multidevice
@pytest.mark.xdist_group("multidevice")
def test_splash_attention_runs_per_shard_on_a_mesh(measured):
    """The softmax baseline with splash attention (its TPU kernel; interpreted on CPU) on a
    2x2x2 mesh equals one device, and lowers for TPU as three Mosaic kernels (forward, dq,
    dkv) run per shard."""
    r = measured["splash_mesh"]
    assert r["tpu_lowering"]["error"] is None, r["tpu_lowering"]["error"]
    assert r["tpu_lowering"]["kernels"] == 3
    assert r["output"] < 1e-5
    assert "['qkv']['kernel'].value" in r["grads"]
    assert max(r["grads"].values()) < 1e-5, r["grads"]


@pytest.mark.slow
@pytest.mark.multidevice
@pytest.mark.xdist_group("multidevice")
def test_fused_decoding_step_runs_per_shard_on_a_mesh(measured):
    """`decode_impl="pallas"` (the fused step, interpreted on CPU) samples the same tokens
    on 2x4x1 and 2x2x2 meshes as on one device."""
    r = measured["pallas_decode"]
    assert r["distinct_tokens"] > 5
    assert r["2x4x1"] == r["2x2x2"] == 0


def test_per_shard_splits_a_name_only_where_every_array_can():
    """`per_shard`'s specs: batch over data x fsdp and heads over tensor when every array
    divides; a decoding cache whose merged batch x heads axis divides where the batch
    itself does not keeps the batch whole everywhere (else devices would see different
    rows of q and of the cache)."""
    from lasad_jax.parallel.rules import names_along, shard_specs

    def arr(*shape):
        return jax.ShapeDtypeStruct(shape, np.float32)

    tokens = ("batch", None, "heads", None)
    q, decay = arr(8, 16, 4, 32), arr(4)
    ins, out = shard_specs((tokens, tokens, ("heads",)), (q, q, decay), tokens, q, MESH_222)
    assert ins == (P(("data", "fsdp"), None, "tensor", None),) * 2 + (P("tensor"),)
    assert out == ins[0]

    step = ("batch", None, None)
    cache = {"state": arr(5, 2 * 4, 16, 16), "slot": arr()}  # batch 2 x 4 heads, merged
    cache_names = names_along({"state": 1, "slot": -1}, cache)
    assert cache_names == {"state": (None, "batch", None, None), "slot": ()}
    o = arr(2, 4, 16)
    ins, out = shard_specs((cache_names, step), (cache, o), (step, cache_names), (o, cache),
                           MESH_222)  # 2 rows do not split 4 ways; 8 merged rows would
    assert ins[0] == {"state": P(None, None, None, None), "slot": P()}
    assert ins[1] == P(None, None, None) and out[1] == ins[0]
    o4 = arr(4, 4, 16)
    cache4 = {"state": arr(5, 4 * 4, 16, 16), "slot": arr()}
    ins, _ = shard_specs((cache_names, step), (cache4, o4), (step, cache_names), (o4, cache4),
                         MESH_222)
    assert ins[0]["state"] == P(None, ("data", "fsdp"), None, None)
    assert ins[1] == P(("data", "fsdp"), None, None)
