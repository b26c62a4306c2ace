"""Multi-device checks, run by tests/parallel/test_sharding.py in a subprocess with 8 simulated CPU
devices (the device count is fixed when JAX starts, and pytest's JAX has one).

    XLA_FLAGS=--xla_force_host_platform_device_count=8 \
        python tests/parallel/multidevice/sharding_checks.py OUT.json

Writes one JSON object of measured values; the test asserts on them.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import re
import runpy
import sys
import tempfile
from unittest import mock

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

from lasad_jax.config import parse  # noqa: E402
from lasad_jax.jobs import train  # noqa: E402
from lasad_jax.models import LASADGen  # noqa: E402
from lasad_jax.parallel import MeshConfig, build_mesh, global_batch, sharded_init  # noqa: E402
from lasad_jax.parallel.state import place_state  # noqa: E402
from lasad_jax.sampling.generate import generate  # noqa: E402
from lasad_jax.sampling.sampler import weights_fingerprint  # noqa: E402
from lasad_jax.training.generator import state_factory  # noqa: E402
from lasad_jax.training.step import make_train_step  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT))  # for tests.helpers: this file runs as a script
from tests.helpers import DEFAULT_PIPELINE  # noqa: E402

MESHES = ((8, 1, 1), (2, 4, 1), (2, 2, 2))


def demo_config(**train):
    config = runpy.run_path(str(ROOT / "configs" / "demo.py"))["get_config"]()
    # Width 64 and 4 heads split evenly over fsdp and tensor; the 17-token vocabulary
    # and 11 class rows do not, and stay replicated.
    config.model.update(num_layers=2, num_heads=4, dim=64, gate_rank=16)
    config.batch_size = 16
    config.num_steps = 10
    config.optimizer.warmup_steps = 2
    config.train.update(log_every=1, eval_every=0, eval_batch_size=16, checkpoint_every=5,
                        sample_at_end=False, progress_every_secs=0.0)
    config.train.update(train)
    return config


def train_and_evaluate(config, workdir):
    return train.run(parse(config, "train"), workdir)


def mesh_of(shape):
    return build_mesh(MeshConfig(*shape), devices=jax.devices()[:int(np.prod(shape))])


def noisy(tree, seed: int, scale: float):
    """Adds N(0, scale) to every float leaf: the zero output head would otherwise make
    the first loss log(vocab) whatever the rest of the network computes."""
    leaves, treedef = jax.tree.flatten(tree)
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    return jax.tree.unflatten(treedef, [
        x + scale * jax.random.normal(k, x.shape) if x.dtype == np.float32 else x
        for x, k in zip(leaves, keys)])


def step_setup():
    """The train step's pieces for the step checks: `(graphdef, init, tx, schedule,
    batch)`, the parameters perturbed and no warmup (a real update from the first step),
    a batch of 16 random sequences."""
    config = demo_config()
    config.optimizer.warmup_steps = 0
    run = parse(config, "train")
    graphdef, init0, tx, schedule = state_factory(run.model, run.optimizer,
                                                  batch_size=run.batch_size, seed=run.seed,
                                                  total_steps=10)

    def init():
        state = init0()
        params = noisy(state.params, 1, 0.05)
        return dataclasses.replace(state, params=params, ema_params=params)

    rng = np.random.default_rng(0)
    batch = {"tokens": rng.integers(0, 17, (16, 64)).astype(np.int32),
             "label": rng.integers(0, 10, (16,)).astype(np.int32)}
    return graphdef, init, tx, schedule, batch


def one_step_checks(out: dict) -> None:
    """One train step on each mesh against the same step on one device."""
    graphdef, init, tx, schedule, batch = step_setup()
    results = {}
    for shape in ((1, 1, 1),) + MESHES:
        mesh = mesh_of(shape)
        state, shardings = sharded_init(init, mesh)
        step = make_train_step(graphdef, tx, schedule, class_dropout=0.1, null_class=10,
                               ema_decay=0.9, state_shardings=shardings)
        with jax.set_mesh(mesh):
            new_state, metrics = step(state, global_batch(batch, mesh))
            new_state, metrics2 = step(new_state, global_batch(batch, mesh))
        kernel = new_state.params["blocks"][0]["mlp"]["w_gate"]["kernel"][...]
        mu = new_state.opt_state
        results[shape] = dict(
            loss=[float(metrics["loss"]), float(metrics2["loss"])],
            params=[np.asarray(x) for x in jax.tree.leaves(new_state.params)],
            ema=[np.asarray(x) for x in jax.tree.leaves(new_state.ema_params)],
            w_gate_spec=str(kernel.sharding.spec),
            w_gate_shard=list(kernel.addressable_shards[0].data.shape),
            opt_leaves_sharded=sum(
                1 for x in jax.tree.leaves(mu)
                if x.ndim and x.addressable_shards[0].data.shape != x.shape),
        )
    base = results[(1, 1, 1)]
    out["one_step"] = {
        "x".join(map(str, shape)): dict(
            loss=r["loss"], base_loss=base["loss"],
            max_param_diff=max(float(np.max(np.abs(a - b)))
                               for a, b in zip(r["params"], base["params"])),
            max_ema_diff=max(float(np.max(np.abs(a - b)))
                             for a, b in zip(r["ema"], base["ema"])),
            w_gate_spec=r["w_gate_spec"], w_gate_shard=r["w_gate_shard"],
            opt_leaves_sharded=r["opt_leaves_sharded"])
        for shape, r in results.items()}


COLLECTIVES = ("all-gather", "all-reduce", "reduce-scatter", "all-to-all", "collective-permute")


def collectives(hlo: str) -> dict[str, list[str]]:
    """The result types of each kind of collective in an optimized, partitioned HLO
    program (`f32[64,128]`), each type once."""
    return {op: sorted(set(re.findall(rf"= \(?([a-z0-9]+\[[0-9,]*\])[^=]*? {op}(?:-start)?\(",
                                      hlo)))
            for op in COLLECTIVES}


def accumulation_checks(out: dict) -> None:
    """One train step with the batch of 16 in 2 micro-batches on two meshes against the
    same step without accumulation on one device, and the collectives of the partitioned
    programs: the strided split (`training.step.micro_batches`) must move no example
    between devices."""
    graphdef, init, tx, schedule, batch = step_setup()
    results, ops = {}, {}
    for shape, accum in (((1, 1, 1), 1), ((8, 1, 1), 2), ((2, 2, 2), 2)):
        mesh = mesh_of(shape)
        state, shardings = sharded_init(init, mesh)
        step = make_train_step(graphdef, tx, schedule, class_dropout=0.5, null_class=10,
                               ema_decay=0.9, state_shardings=shardings,
                               grad_accum_steps=accum)
        name = "x".join(map(str, shape)) + f"/{accum}"
        with jax.set_mesh(mesh):
            data = global_batch(batch, mesh)
            # The program whose HLO is read is the one that runs: one compile per mesh.
            compiled = step.lower(state, data).compile(DEFAULT_PIPELINE)
            ops[name] = collectives(compiled.as_text())
            new_state, metrics = compiled(state, data)
        results[name] = (float(metrics["loss"]), float(metrics["grad_norm"]),
                         [np.asarray(x) for x in jax.tree.leaves(new_state.params)])
    base = results["1x1x1/1"]
    out["accumulation"] = {
        name: dict(loss=r[0], base_loss=base[0], grad_norm=r[1], base_grad_norm=base[1],
                   max_param_diff=max(float(np.max(np.abs(a - b)))
                                      for a, b in zip(r[2], base[2])),
                   collectives=ops[name])
        for name, r in results.items()}


def metric(workdir: str, name: str) -> dict[int, float]:
    rows = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
    return {row["step"]: row[name] for row in rows if name in row}


def resume_checks(out: dict, tmp: str) -> None:
    """Saved on (8,1,1) at step 5, resumed on (2,2,2): the next 5 losses against an
    uninterrupted (8,1,1) run."""
    full, split = os.path.join(tmp, "full"), os.path.join(tmp, "split")
    mesh = {"data": 8, "fsdp": 1, "tensor": 1}
    config = demo_config()
    config.mesh = mesh
    train_and_evaluate(config, full)
    config = demo_config(stop_after=5)
    config.mesh = mesh
    train_and_evaluate(config, split)
    config = demo_config()
    config.mesh = {"data": 2, "fsdp": 2, "tensor": 2}
    train_and_evaluate(config, split)
    out["resume"] = {name: {"full": metric(full, name), "split": metric(split, name)}
                     for name in ("loss", "val_bits_per_token_ema")}


def tokens_on_meshes(model, labels, seed: int, meshes, **kw) -> dict:
    """How many tokens `generate` draws differently on each mesh than on one device, and
    how many distinct tokens one device drew (a degenerate model would match anyway)."""
    single = generate(model, labels, jax.random.key(seed), **kw)
    found = {"x".join(map(str, s)): int(np.sum(
        generate(model, labels, jax.random.key(seed), mesh=mesh_of(s), **kw) != single))
        for s in meshes}
    return {**found, "distinct_tokens": int(len(np.unique(single)))}


def sampling_checks(out: dict) -> None:
    """The same seeds on one device and on two meshes give the same tokens."""
    run = parse(demo_config(), "train")
    graphdef, state = nnx.split(LASADGen(run.model, rngs=nnx.Rngs(run.seed)))
    model = nnx.merge(graphdef, noisy(state, 3, 0.3))
    out["sampling"] = tokens_on_meshes(model, np.arange(16) % 10, 7, MESHES, cfg_scale=2.0,
                                       temperature=1.0, top_k=8, top_p=0.95)
    # The weights' fingerprint, which names sample files and guards evaluation parts,
    # does not depend on how the weights lie over the devices.
    params = nnx.state(model, nnx.Param)
    single = weights_fingerprint(model)
    out["sampling"]["fingerprint"] = {}
    for shape in MESHES:
        placed, _ = place_state(params, mesh_of(shape))
        sharded = sum(not x.sharding.is_fully_replicated for x in jax.tree.leaves(placed))
        copy = nnx.merge(graphdef, noisy(state, 3, 0.3))
        nnx.update(copy, placed)
        out["sampling"]["fingerprint"]["x".join(map(str, shape))] = {
            "sharded_arrays": int(sharded), "same": weights_fingerprint(copy) == single}


def mixer_on_mesh(cfg, chooser) -> dict:
    """One mixer of `cfg` (its Pallas kernels interpreted on CPU) on a 2x2x2 mesh: the
    output and every gradient against one device, and whether the same program lowers for
    TPU with `chooser`, the `(module, "target_platform")` that picks its kernels, saying
    "tpu": Mosaic refuses a kernel XLA's partitioner would have to split
    (`parallel.rules.per_shard` runs it per shard instead)."""
    import jax.numpy as jnp
    from jax.sharding import NamedSharding, PartitionSpec

    from lasad_jax.models.mixers import make_mixer

    graphdef, state = nnx.split(make_mixer(cfg, jnp.float32, nnx.Rngs(0)))
    state = noisy(state, 5, 0.2)  # decays and gates away from their symmetric start
    x = jax.random.normal(jax.random.key(1), (4, cfg.num_tokens, cfg.dim))
    slots = jnp.arange(cfg.num_tokens)

    def loss(state, x):
        y = nnx.merge(graphdef, state)(x, slots)
        return jnp.sum(y * jnp.cos(y)), y

    fn = jax.jit(jax.value_and_grad(loss, has_aux=True))
    (_, y1), g1 = fn(state, x)
    mesh = mesh_of((2, 2, 2))
    with jax.set_mesh(mesh):
        xs = jax.device_put(x, NamedSharding(mesh, PartitionSpec(("data", "fsdp"))))
        (_, y2), g2 = fn(state, xs)

        def rel(a, b):
            return float(jnp.max(jnp.abs(a - b)) / jnp.max(jnp.abs(a)))

        result = {
            "output": rel(y1, y2),
            "grads": {jax.tree_util.keystr(p): rel(a, b) for (p, a), b in zip(
                jax.tree_util.tree_flatten_with_path(g1)[0], jax.tree.leaves(g2))}}
        try:
            with mock.patch.object(*chooser, lambda: "tpu"):  # Mosaic, not the interpreter
                shapes = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), state)
                x_shape = jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=xs.sharding)
                fresh = jax.jit(jax.value_and_grad(loss, has_aux=True))  # not yet run on CPU
                text = fresh.trace(shapes, x_shape).lower(lowering_platforms=("tpu",)).as_text()
            result["tpu_lowering"] = {"kernels": text.count("tpu_custom_call"), "error": None}
        except Exception as err:  # what Mosaic says of a kernel left to the partitioner
            result["tpu_lowering"] = {"kernels": 0, "error": f"{type(err).__name__}: {err}"[:300]}
    return result


def pallas_checks(out: dict) -> None:
    """The LASAD mixer with `impl="pallas"` on a mesh (`mixer_on_mesh`)."""
    import lasad_jax.ops.pallas as ops_pallas
    from lasad_jax.models import ModelConfig

    cfg = ModelConfig(vocab_size=16, num_classes=4, grid=(5, 6), num_layers=1, num_heads=4,
                      dim=64, gate_rank=16, mixer="lasad", impl="pallas", chunk_size=12)
    out["pallas_mesh"] = mixer_on_mesh(cfg, (ops_pallas, "target_platform"))


def splash_checks(out: dict) -> None:
    """The softmax mixer with splash attention, its kernel on TPU, on a mesh
    (`mixer_on_mesh`): chosen here as a TPU would choose it, interpreted on CPU."""
    from lasad_jax.models import ModelConfig, mixers, tpu_attention

    cfg = ModelConfig(vocab_size=16, num_classes=4, grid=(5, 6), num_layers=1, num_heads=4,
                      dim=64, mixer="softmax")
    with mock.patch.object(mixers, "attention_impl", lambda q: "splash"):
        out["splash_mesh"] = mixer_on_mesh(cfg, (tpu_attention, "target_platform"))


def pallas_decode_checks(out: dict) -> None:
    """Sampling with the fused decoding step (`decode_impl="pallas"`, interpreted on CPU)
    on two meshes draws the same tokens as on one device: the step runs per shard."""
    from lasad_jax.models import ModelConfig

    model_cfg = ModelConfig(vocab_size=17, num_classes=10, grid=(4, 5), num_layers=2,
                            num_heads=4, dim=64, gate_rank=16, mixer="lasad",
                            decode_impl="pallas")
    graphdef, state = nnx.split(LASADGen(model_cfg, rngs=nnx.Rngs(0)))
    model = nnx.merge(graphdef, noisy(state, 4, 0.3))
    out["pallas_decode"] = tokens_on_meshes(model, np.arange(8) % 10, 3, ((2, 4, 1), (2, 2, 2)),
                                            cfg_scale=2.0, temperature=1.0, top_k=0, top_p=1.0)


def main(path: str) -> None:
    out: dict = {"devices": jax.device_count()}
    pallas_checks(out)
    splash_checks(out)
    pallas_decode_checks(out)
    one_step_checks(out)
    accumulation_checks(out)
    sampling_checks(out)
    with tempfile.TemporaryDirectory() as tmp:
        resume_checks(out, tmp)
    with open(path, "w") as f:
        json.dump(out, f, indent=1)


if __name__ == "__main__":
    main(sys.argv[1])
