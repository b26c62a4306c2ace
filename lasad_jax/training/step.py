"""The pure train and eval steps, and the state they carry.

The model is split once (`nnx.split`) into a static graph definition and a parameter
pytree; the steps are functions of pytrees only, merged back into a module inside the
trace, so `jax.jit` sees no Python objects and the state can be donated.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from lasad_jax.parallel.mesh import BATCH_AXES


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class TrainState:
    """Everything a resumed run needs besides the data iterator."""

    step: jax.Array
    params: Any
    opt_state: Any
    ema_params: Any
    rng: jax.Array
    # Non-finite updates skipped so far and the last step that was (-1: none); with
    # `train.nonfinite="skip"` the loop reports changes to them with their step.
    skipped: jax.Array
    last_skipped: jax.Array


def create_train_state(model: nnx.Module, tx: optax.GradientTransformation,
                       seed: int) -> tuple[Any, TrainState]:
    graphdef, params = nnx.split(model, nnx.Param)
    ema = jax.tree.map(jnp.copy, params)
    state = TrainState(step=jnp.zeros((), jnp.int32), params=params,
                       opt_state=tx.init(params), ema_params=ema,
                       rng=jax.random.key_data(jax.random.key(seed)),
                       skipped=jnp.zeros((), jnp.int32),
                       last_skipped=jnp.full((), -1, jnp.int32))
    return graphdef, state


def token_loss(graphdef: Any, params: Any, labels: jax.Array, tokens: jax.Array) -> jax.Array:
    """Mean next-token cross-entropy in nats per token: `tokens: [B, L]` int."""
    model = nnx.merge(graphdef, params)
    logits = model(labels, tokens[:, :-1])
    return optax.softmax_cross_entropy_with_integer_labels(logits, tokens).mean(axis=-1)


def drop_classes(key: jax.Array, labels: jax.Array, rate: float, null_class: int) -> jax.Array:
    """Replaces a `rate` fraction of labels by the null class, so the same network also
    learns the unconditional model that classifier-free guidance needs."""
    drop = jax.random.bernoulli(key, rate, labels.shape)
    return jnp.where(drop, null_class, labels)


def ema_update(ema: Any, params: Any, step: jax.Array, decay: float) -> Any:
    """EMA with the usual warmup `min(decay, (1 + t) / (10 + t))`: early averages do not
    drag in the random initialisation."""
    d = jnp.minimum(decay, (1.0 + step) / (10.0 + step))
    return jax.tree.map(lambda e, p: e * d + (1.0 - d) * p, ema, params)


def all_finite(tree: Any) -> jax.Array:
    """True when every float in `tree` is finite: one fused reduction, no host sync."""
    leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)
              if jnp.issubdtype(x.dtype, jnp.floating)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.array(True)


NONFINITE_POLICIES = ("halt", "skip")


def micro_batches(batch: dict[str, jax.Array], steps: int,
                  mesh: jax.sharding.Mesh | None = None) -> dict[str, jax.Array]:
    """Splits every `[B, ...]` array of `batch` into `steps` micro-batches, `[steps, B /
    steps, ...]`: micro-batch `i` takes rows `i, i + steps, i + 2 steps, ...`.

    Why strided rather than contiguous: the batch is split over the data-parallel devices
    in contiguous blocks, and a strided split takes the same number of rows from every
    device's block, so each micro-batch stays spread over all of them and the split moves
    nothing between devices (`mesh`: pins that layout; tests/parallel checks the
    partitioned program exchanges no example between devices)."""

    def split(x: jax.Array) -> jax.Array:
        x = jnp.moveaxis(x.reshape(x.shape[0] // steps, steps, *x.shape[1:]), 1, 0)
        if mesh is None:
            return x
        spec = PartitionSpec(None, BATCH_AXES, *([None] * (x.ndim - 2)))
        return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, spec))

    return {name: split(x) for name, x in batch.items()}


def accumulate(loss_fn: Callable, params: Any, batch: dict[str, jax.Array], steps: int,
               state_shardings: Any | None = None) -> tuple[jax.Array, Any]:
    """`loss_fn(params, labels, tokens)`'s value and gradients, averaged over `steps`
    micro-batches of `batch` run one after another (a `lax.scan`), summed in float32.
    With `state_shardings`, the sums are laid out as the parameters and the micro-batches
    as the batch."""
    mesh = None if state_shardings is None else jax.tree.leaves(state_shardings)[0].mesh
    zeros = jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), params)
    if state_shardings is not None:
        zeros = jax.lax.with_sharding_constraint(zeros, state_shardings.params)

    def add(carry, micro):
        loss, grads = jax.value_and_grad(loss_fn)(params, micro["label"], micro["tokens"])
        total, sums = carry
        sums = jax.tree.map(lambda s, g: s + g.astype(jnp.float32), sums, grads)
        return (total + loss.astype(jnp.float32), sums), None

    (total, sums), _ = jax.lax.scan(add, (jnp.zeros((), jnp.float32), zeros),
                                    micro_batches(batch, steps, mesh))
    grads = jax.tree.map(lambda s, p: (s / steps).astype(p.dtype), sums, params)
    return total / steps, grads


def make_train_step(graphdef: Any, tx: optax.GradientTransformation, schedule: optax.Schedule,
                    *, class_dropout: float, null_class: int, ema_decay: float,
                    state_shardings: Any | None = None, nonfinite: str = "halt",
                    grad_accum_steps: int = 1) -> Callable:
    """Returns `train_step(state, batch) -> (state, metrics)`, jitted, donating `state`.

    `grad_accum_steps` > 1: the batch goes through the model in that many equal
    micro-batches (`micro_batches`), one after another in a `lax.scan`, their loss and
    gradients summed in float32 and averaged into one update. The objective is the
    batch's mean loss either way and the class-dropout draws are made for the whole batch
    first, so the update equals the one without accumulation up to float rounding, while
    the activations alive at once are those of one micro-batch: a step of a batch that
    does not fit in memory (docs/configuration.md, `train.grad_accum_steps`).

    `nonfinite="skip"`: a step whose loss or gradients are not finite leaves parameters,
    optimizer state and EMA as they were (the step counter and the data still advance)
    and counts itself in `state.skipped` / `state.last_skipped`. The schedule follows the
    updates applied (optax's own count), so each skipped step delays it by one and the
    run ends that many steps before the schedule does; `metrics["learning_rate"]` is the
    rate the step's update used, `schedule(step - skipped)`. `"halt"`: the update
    is applied and the loop stops at its next check, before anything is saved. Either
    way `metrics["state_finite"]` says whether the new state may be checkpointed.

    `state_finite` is read off two norms the metrics compute anyway: the parameters' and
    the gradients'. It holds by induction from a finite state (a fresh one, one restored
    from a checkpoint, which only finite states reach, or one a skipped step kept):
    clipped finite gradients keep Adam's moments finite, a non-finite moment or gradient
    makes its own parameter's update, hence the parameter norm, non-finite, and the EMA
    of finite parameters is finite. Checking every array of the state instead
    (`all_finite`) read parameters, both moments and the EMA at every step: about 4 GB and
    1300 of 3900 kernels per step for LASADGen-L, compiled for an H200
    (benchmarks/gpu_aot.py, stage train).

    With `state_shardings` (from `lasad_jax.parallel.state_shardings`) the new state is
    pinned to the same layout as the old one, so donation reuses its buffers and the
    step never recompiles; the batch arrives already split over the data axes.
    """

    def train_step(state: TrainState, batch: dict[str, jax.Array]):
        key = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
        labels = drop_classes(key, batch["label"], class_dropout, null_class)

        def loss_fn(params, labels, tokens):
            return token_loss(graphdef, params, labels, tokens).mean()

        if grad_accum_steps == 1:
            loss, grads = jax.value_and_grad(loss_fn)(state.params, labels, batch["tokens"])
        else:
            loss, grads = accumulate(loss_fn, state.params,
                                     {"label": labels, "tokens": batch["tokens"]},
                                     grad_accum_steps, state_shardings)
        grad_norm = optax.tree.norm(grads)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        ema = ema_update(state.ema_params, params, state.step, ema_decay)
        skipped, last_skipped = state.skipped, state.last_skipped
        # Finite gradients (or, when skipping, a step that kept the old state) keep the
        # optimizer state and EMA finite; see the docstring.
        moments_finite = jnp.array(True) if nonfinite == "skip" else jnp.isfinite(grad_norm)
        if nonfinite == "skip":
            ok = jnp.isfinite(loss) & jnp.isfinite(grad_norm)

            def keep(new, old):
                return jax.tree.map(lambda a, b: jnp.where(ok, a, b), new, old)

            params, opt_state = keep(params, state.params), keep(opt_state, state.opt_state)
            ema = keep(ema, state.ema_params)
            skipped = skipped + jnp.where(ok, 0, 1).astype(jnp.int32)
            last_skipped = jnp.where(ok, last_skipped, state.step + 1)
        new_state = dataclasses.replace(
            state, step=state.step + 1, params=params, opt_state=opt_state, ema_params=ema,
            skipped=skipped, last_skipped=last_skipped)
        param_norm = optax.tree.norm(params)
        metrics = {"loss": loss, "grad_norm": grad_norm, "param_norm": param_norm,
                   "learning_rate": schedule(state.step - state.skipped),
                   "state_finite": jnp.isfinite(param_norm) & moments_finite,
                   "skipped": skipped, "last_skipped": last_skipped}
        return new_state, metrics

    if nonfinite not in NONFINITE_POLICIES:
        raise ValueError(f"train.nonfinite must be one of {NONFINITE_POLICIES}, got "
                         f"{nonfinite!r}")
    if not (isinstance(grad_accum_steps, int) and grad_accum_steps >= 1):
        raise ValueError(f"train.grad_accum_steps must be an int >= 1, got "
                         f"{grad_accum_steps!r}")
    if state_shardings is None:
        return jax.jit(train_step, donate_argnums=0)
    mesh = jax.tree.leaves(state_shardings)[0].mesh
    metrics_sharding = NamedSharding(mesh, PartitionSpec())
    return jax.jit(train_step, donate_argnums=0,
                   out_shardings=(state_shardings, metrics_sharding))


def make_eval_step(graphdef: Any) -> Callable:
    """Returns `eval_step(params, batch) -> (sum of per-image mean losses, count)` so
    padded examples (mask 0) drop out of the average."""

    def eval_step(params: Any, batch: dict[str, jax.Array]):
        per_image = token_loss(graphdef, params, batch["label"], batch["tokens"])
        mask = batch["mask"]
        return jnp.sum(per_image * mask), jnp.sum(mask)

    return jax.jit(eval_step)
