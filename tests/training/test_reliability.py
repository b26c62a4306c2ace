"""Faults made to happen for real: SIGTERM and SIGKILL mid-run, half-written and corrupted
checkpoints, non-finite updates, a bad config on the command line, and the operator at
the numerical edge. (Every kind of bad config: tests/test_config.py.)

The runs are the demo config shrunk to one small layer (seconds per run), in
subprocesses where a signal has to reach a real process.
"""

from __future__ import annotations

import glob
import logging
import os
import shutil
import signal
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lasad_jax import ops
from lasad_jax.config import parse
from lasad_jax.jobs.sample import load_or_train
from lasad_jax.main import cli
from lasad_jax.training import checkpoint as ckpt_lib
from lasad_jax.training.generator import make_state
from tests.helpers import (
    ROOT,
    TINY_RUN,
    TINY_STEPS,
    assert_same_rows,
    flag_config,
    metrics_rows,
    tensorboard,
    tiny_demo_config,
    train,
)


def command(workdir, *extra):
    return [sys.executable, "-m", "lasad_jax.main", f"--config={ROOT / 'configs' / 'demo.py'}",
            f"--workdir={workdir}", *TINY_RUN, *extra]


def env():
    return dict(os.environ, JAX_PLATFORMS="cpu")


def run(workdir, *extra):
    proc = subprocess.run(command(workdir, *extra), cwd=ROOT, capture_output=True, text=True,
                          env=env(), timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def interrupt(workdir, sig, after_step, *extra):
    """Starts a run and sends `sig` once step `after_step` has been logged."""
    proc = subprocess.Popen(command(workdir, *extra), cwd=ROOT, stderr=subprocess.PIPE,
                            text=True, env=env())
    log = []
    for line in proc.stderr:
        log.append(line)
        if f"] [{after_step}] " in line:
            break
    proc.send_signal(sig)
    log.append(proc.communicate(timeout=300)[1])
    return proc.returncode, "".join(log)


def as_tensorboard_shows(series):
    """`[(step, value)]` in the order the event files hold them (`tests.helpers.tensorboard`
    reads them in name order, which begins with the time each was opened), as TensorBoard's
    default loader shows them: a record at step s preempts every earlier record at a step
    >= s, as its Rust data server's reservoir does with the steps a job logs again after
    a restart."""
    shown = []
    for step, value in series:
        shown = [(s, v) for s, v in shown if s < step]
        shown.append((step, value))
    return shown


def assert_same_run(workdir, reference):
    assert_same_rows(workdir, reference)
    # TensorBoard's files keep the rows the resumed run logged again (they cannot be cut
    # like metrics.jsonl); its loader shows the later ones, so the same curve.
    got, want = (as_tensorboard_shows(tensorboard(w)["loss"]) for w in (workdir, reference))
    assert [s for s, _ in got] == [s for s, _ in want] == list(range(1, TINY_STEPS + 1))
    np.testing.assert_allclose([v for _, v in got], [v for _, v in want], rtol=1e-6)


# The tests that compare against it are one `xdist_group`: a module fixture runs once per
# worker that needs it, and this one is a 30-step training run in a subprocess.
UNINTERRUPTED = pytest.mark.xdist_group("reliability_uninterrupted")


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("uninterrupted")
    run(workdir)
    return workdir


@pytest.mark.slow
@UNINTERRUPTED
def test_sigterm_checkpoints_exits_0_and_the_resumed_run_continues_exactly(
        tmp_path, uninterrupted):
    code, log = interrupt(tmp_path, signal.SIGTERM, 7, "--config.train.checkpoint_every=1000")
    assert code == 0, log[-3000:]
    saved = [int(d) for d in os.listdir(tmp_path / "checkpoints") if d.isdigit()]
    assert len(saved) == 1 and 7 <= saved[0] < TINY_STEPS, saved
    assert f"preempted: saved step {saved[0]}" in log
    run(tmp_path, "--config.train.checkpoint_every=1000")
    assert_same_run(tmp_path, uninterrupted)
    # Launching a finished run again (a scheduler retry) changes nothing and exits 0.
    again = run(tmp_path, "--config.train.checkpoint_every=1000")
    assert "nothing to train" in again.stderr
    assert_same_run(tmp_path, uninterrupted)


@pytest.mark.slow
@UNINTERRUPTED
def test_sigkill_mid_save_resumes_from_the_last_complete_checkpoint(tmp_path, uninterrupted):
    # Saving every step keeps an asynchronous save in flight most of the time.
    code, log = interrupt(tmp_path, signal.SIGKILL, 9, "--config.train.checkpoint_every=1",
                          "--config.train.keep_checkpoints=3")
    assert code == -signal.SIGKILL, log[-3000:]
    again = run(tmp_path, "--config.train.checkpoint_every=1",
                "--config.train.keep_checkpoints=3")
    assert "resumed from" in again.stderr
    assert_same_run(tmp_path, uninterrupted)
    leftovers = [d for d in os.listdir(tmp_path / "checkpoints") if not d.isdigit()]
    assert leftovers == [], leftovers  # no temporary directories left to clean by hand


@pytest.mark.slow
@UNINTERRUPTED
def test_a_half_written_checkpoint_is_never_picked(tmp_path, uninterrupted):
    workdir = tmp_path / "run"
    shutil.copytree(uninterrupted, workdir)
    ckpts = workdir / "checkpoints"
    newest = max(int(d) for d in os.listdir(ckpts) if d.isdigit())
    # What a process killed during a save leaves: a temporary directory, half filled.
    partial = ckpts / f"{newest + 5}.orbax-checkpoint-tmp-1795580000000000"
    shutil.copytree(ckpts / str(newest), partial)
    for path in glob.glob(str(partial / "state" / "**" / "*"), recursive=True):
        if os.path.isfile(path):
            os.truncate(path, os.path.getsize(path) // 2)
    reader = ckpt_lib.Checkpointer(str(ckpts), read_only=True)
    assert reader.latest_step() == newest
    reader.close()
    out = run(workdir, f"--config.num_steps={TINY_STEPS + 2}")
    assert f"resumed from {ckpts} at step {newest}" in out.stderr
    assert not partial.exists()


def corrupt(step_dir):
    for path in glob.glob(str(step_dir / "**" / "*"), recursive=True):
        if os.path.isfile(path) and not path.endswith("_CHECKPOINT_METADATA"):
            os.truncate(path, os.path.getsize(path) // 3)


@pytest.mark.slow
def test_a_corrupted_latest_checkpoint_falls_back_to_the_previous(tmp_path, caplog):
    workdir = tmp_path / "run"
    run(workdir, "--config.train.checkpoint_every=10", "--config.train.keep_checkpoints=2")
    ckpts = workdir / "checkpoints"
    assert sorted(int(d) for d in os.listdir(ckpts)) == [20, 30]
    corrupt(ckpts / "30")

    # Sampling and the notebook's loader restore through the same path: the same
    # warning, the previous step, and the unreadable step left where it is.
    sample = command(workdir, "--mode=sample", "--config.sample.per_class=1",
                     "--config.sample.batch_size=10")[3:]
    with caplog.at_level(logging.WARNING, logger="absl"):
        assert cli(["lasad_jax.main", *sample]) == 0
    assert any(r.getMessage().startswith(f"checkpoint step 30 in {ckpts} cannot be restored")
               for r in caplog.records)
    assert glob.glob(str(workdir / "samples-step20-*.npz"))
    assert sorted(os.listdir(ckpts)) == ["20", "30"]
    model, step = load_or_train(parse(flag_config(*sample), "sample"), str(workdir),
                                str(tmp_path / "unused"))
    assert step == 20 and sorted(os.listdir(ckpts)) == ["20", "30"]
    out = run(workdir, f"--config.num_steps={TINY_STEPS + 1}",
              "--config.train.checkpoint_every=1000", "--config.train.keep_checkpoints=2")
    assert "checkpoint step 30 in" in out.stderr and "cannot be restored" in out.stderr
    assert f"resumed from {ckpts} at step 20" in out.stderr
    names = os.listdir(ckpts)
    assert "20" in names and "31" in names  # the good one kept, training went on
    assert any(n.startswith("corrupt-30-") for n in names)  # moved aside, not deleted

    # Nothing readable: a clear one-line error, no traceback, nothing moved or deleted.
    for name in ("20", "31"):
        corrupt(ckpts / name)
    before = sorted(os.listdir(ckpts))
    proc = subprocess.run(command(workdir, f"--config.num_steps={TINY_STEPS + 2}"), cwd=ROOT,
                          capture_output=True, text=True, env=env(), timeout=600)
    assert proc.returncode == 1
    assert "error: no checkpoint in" in proc.stderr and "Traceback" not in proc.stderr
    assert sorted(os.listdir(ckpts)) == before


@pytest.fixture
def nan_at_step_3(monkeypatch):
    """Token id = vocabulary size in step 3's batch: the embedding lookup fills it with
    NaN, so that step's loss and gradients are NaN (a real non-finite update)."""
    import lasad_jax.training.host_loop as loop

    original, calls = loop.global_batch, []

    def poisoned(batch, mesh):
        calls.append(1)
        if len(calls) == 3:
            batch = dict(batch, tokens=np.full_like(batch["tokens"], 17))
        return original(batch, mesh)

    monkeypatch.setattr(loop, "global_batch", poisoned)


@pytest.mark.slow
def test_nonfinite_update_is_skipped_and_logged(tmp_path, nan_at_step_3, caplog):
    config = tiny_demo_config(nonfinite="skip", checkpoint_every=2)
    train(config, str(tmp_path))
    got = metrics_rows(tmp_path)
    assert [r["skipped_updates"] for r in got] == [0, 0, 1, 1, 1, 1]
    assert np.isnan(got[2]["loss"]) and all(np.isfinite(r["loss"]) for i, r in enumerate(got)
                                            if i != 2)
    assert any("the last at step 3" in r.getMessage() for r in caplog.records)
    # Skipping leaves the weights as they were: step 3 changes nothing but the counter.
    assert got[2]["param_norm"] == pytest.approx(got[1]["param_norm"], rel=1e-7)
    # Nor the schedule, which follows the updates applied: the step after the skipped one
    # uses (and logs) the rate the skipped one would have used.
    rates = [r["learning_rate"] for r in got]
    assert rates[3] == rates[2] and len(set(rates[:3])) == 3
    reader = ckpt_lib.Checkpointer(str(tmp_path / "checkpoints"), read_only=True)
    run = parse(config, "train")
    skeleton = ckpt_lib.abstract(jax.eval_shape(lambda: make_state(
        run.model, run.optimizer, batch_size=run.batch_size, seed=run.seed, total_steps=6)[1]))
    assert reader.manager.all_steps() == [4, 6]  # keep_checkpoints=2
    for step in reader.manager.all_steps():
        state = reader.restore(skeleton, step=step)
        assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(state)
                   if np.issubdtype(x.dtype, np.floating))
    reader.close()


@pytest.mark.slow
def test_nonfinite_update_halts_before_anything_is_saved(tmp_path, nan_at_step_3):
    config = tiny_demo_config(nonfinite="halt", checkpoint_every=2)
    with pytest.raises(FloatingPointError, match="step 3"):
        train(config, str(tmp_path))
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["2"]


@pytest.mark.slow
def test_cli_prints_one_line_without_traceback(tmp_path):
    proc = subprocess.run(command(tmp_path, "--config.sample.top_p=2.0",
                                  "--config.train.sample_at_end=True"),
                          cwd=ROOT, capture_output=True, text=True, env=env(), timeout=300)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    assert "config.sample.top_p must be in (0, 1]" in proc.stderr
    assert not os.path.exists(tmp_path / "checkpoints")  # nothing started


def test_decays_of_one_over_16k_tokens_in_bfloat16():
    """No decay at all (both decays 1.0) is the numerically hardest case: every state sums
    all 16,384 earlier tokens. Forward and backward must stay finite, and bfloat16 inputs
    must match float32 on the same values within the documented bound: 2^-7 of the
    largest magnitude for the output and each gradient."""
    rows_, width, heads, d = 128, 128, 2, 16
    key = jax.random.key(0)
    q, k, v = (jax.random.normal(kk, (1, 1 + rows_ * width, heads, d)).astype(jnp.bfloat16)
               for kk in jax.random.split(key, 3))
    ones = jnp.ones((heads,), jnp.float32)

    def loss(q, k, v, row, col):
        o = ops.lasad_attention(q, k, v, width=width, row_decay=row, col_decay=col,
                                num_prefix=1, impl="chunked")
        return jnp.sum(o.astype(jnp.float32) * jnp.cos(jnp.arange(d, dtype=jnp.float32)))

    grad = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2, 3, 4)))
    value_bf, grads_bf = grad(q, k, v, ones, ones)
    value_32, grads_32 = grad(*(x.astype(jnp.float32) for x in (q, k, v)), ones, ones)
    for name, a, b in zip(("q", "k", "v", "row", "col"), grads_bf, grads_32):
        a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
        assert np.all(np.isfinite(a)), name
        assert np.max(np.abs(a - b)) <= 2.0 ** -7 * np.max(np.abs(b)), name
    assert np.isfinite(float(value_bf))
    def out(x, y, z):
        return ops.lasad_attention(x, y, z, width=width, row_decay=ones, col_decay=ones,
                                   num_prefix=1, impl="chunked")

    o_bf = np.asarray(jax.jit(out)(q, k, v), np.float32)
    o_32 = np.asarray(jax.jit(out)(*(x.astype(jnp.float32) for x in (q, k, v))))
    assert np.all(np.isfinite(o_bf))
    assert np.max(np.abs(o_bf - o_32)) <= 2.0 ** -7 * np.max(np.abs(o_32))
