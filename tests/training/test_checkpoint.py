"""A checkpoint saved by one number of processes, resumed by another."""

from __future__ import annotations

import os

import grain
import jax
import jax.numpy as jnp
import pytest

from lasad_jax.training.checkpoint import Checkpointer, CheckpointMismatch


def _batches():
    return iter(grain.MapDataset.range(100).shuffle(seed=0).repeat().batch(4)
                .to_iter_dataset())


def test_resuming_with_another_process_count_is_refused_in_one_line(tmp_path):
    directory = str(tmp_path / "checkpoints")
    state = {"w": jnp.arange(4.0), "step": jnp.array(2)}
    data = _batches()
    next(data)
    with Checkpointer(directory, keep=2, identity={"task": "test"}) as ckpt:
        ckpt.save(2, state, data, force=True)
    target = jax.eval_shape(lambda: state)
    with Checkpointer(directory, keep=2, identity={"task": "test"}) as ckpt:
        step, restored = ckpt.restore_newest_readable(target, _batches())  # same count
    assert step == 2 and float(restored["w"][3]) == 3.0
    # As saved by process 0 of two hosts (grain names each process's file so).
    data_dir = os.path.join(directory, "2", "data")
    os.rename(os.path.join(data_dir, "process_0-of-1.json"),
              os.path.join(data_dir, "process_0-of-2.json"))
    with Checkpointer(directory, keep=2, identity={"task": "test"}) as ckpt:
        with pytest.raises(CheckpointMismatch, match=r"step 2 .* saved by 2 process\(es\) "
                           r"and this run has 1: .* resume training with 2"):
            ckpt.restore_newest_readable(target, _batches())
        # Without a data iterator the state still restores: nothing per process is read.
        step, restored = ckpt.restore_newest_readable(target)
    assert step == 2 and float(restored["w"][3]) == 3.0
    assert sorted(os.listdir(directory)) == ["2"]  # nothing moved aside
