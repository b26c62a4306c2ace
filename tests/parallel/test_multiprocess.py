"""Training in two real processes joined by `jax.distributed`, as on a TPU pod or under
SLURM: the command is `launch/`'s (`LASAD_MULTIHOST=1`), the cluster is SLURM's
environment variables on one machine, with one CPU device per process. Every other test
runs one process, so only these reach the multi-host code paths: JAX's preemption sync
service (the `PreemptionGuard` asks it, and Orbax asks it again from its save thread),
Orbax's collective save and restore, grain's per-process data slices and position files,
the writers of process 0, sampling's gathers (the batch, the weights' fingerprint), and
the tokenizer's trainer (its validation gathers, its export).

The runs are the demo config shrunk to one small layer; the pair of processes shares the
machine's two cores, about 25 s a run.
"""

from __future__ import annotations

import glob
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from tests.helpers import ROOT, TINY_RUN, TINY_STEPS, assert_same_rows, metrics_rows

# No periodic save: the test of SIGTERM finds the preempted step's alone.
GENERATOR = [f"--config={ROOT / 'configs' / 'demo.py'}", *TINY_RUN,
             "--config.train.checkpoint_every=1000"]
# The tokenizer demo shrunk as `tests.helpers.tiny_vq_config`, validated at the end.
TOKENIZER = [f"--config={ROOT / 'configs' / 'vq_demo.py'}", "--config.vq.ch=16",
             "--config.vq.ch_mult=(1,2)", "--config.vq.z_channels=16",
             "--config.vq.codebook_size=32", "--config.vq.norm_groups=8",
             "--config.loss.disc_start=3", "--config.loss.disc_channels=8",
             "--config.loss.disc_layers=1", "--config.batch_size=8", "--config.num_steps=4",
             "--config.optimizer.warmup_steps=1", "--config.train.image_size=16",
             "--config.train.log_every=1", "--config.train.eval_every=0",
             "--config.train.eval_batch_size=16", "--config.train.eval_images=16",
             "--config.train.checkpoint_every=2", "--config.train.progress_every_secs=0"]
TIMEOUT = 300  # seconds for a whole run; a hung collective fails the test, not CI


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def one_device_flags() -> str:
    """This run's XLA_FLAGS (the suite's quick CPU code generation, tests/conftest.py)
    without a simulated device count: one CPU device per process."""
    return " ".join(f for f in os.environ.get("XLA_FLAGS", "").split()
                    if not f.startswith("--xla_force_host_platform_device_count"))


def start(workdir, logs, *flags, processes=2):
    """Starts the processes of one job (SLURM's variables, as `launch/slurm.sh` runs it)
    with `flags` (default: the generator's); process i writes its log to `logs/<i>.log`."""
    flags = flags or GENERATOR
    port, procs = free_port(), []
    os.makedirs(logs, exist_ok=True)
    for i in range(processes):
        env = dict(os.environ, JAX_PLATFORMS="cpu", LASAD_MULTIHOST="1",
                   SLURM_JOB_ID="1", SLURM_STEP_NODELIST="localhost",
                   SLURM_NTASKS=str(processes), SLURM_PROCID=str(i), SLURM_LOCALID=str(i),
                   JAX_COORDINATOR_PORT=str(port))
        env["XLA_FLAGS"] = one_device_flags()
        with open(os.path.join(logs, f"{i}.log"), "w") as log:
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "lasad_jax.main", f"--workdir={workdir}", *flags],
                cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=env))
    return procs


def finish(procs, logs):
    """Waits for every process; returns their exit statuses and logs."""
    deadline = time.monotonic() + TIMEOUT
    try:
        codes = [p.wait(timeout=max(1.0, deadline - time.monotonic())) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    texts = []
    for i in range(len(procs)):
        with open(os.path.join(logs, f"{i}.log")) as f:
            texts.append(f.read())
    return codes, texts


def run(workdir, logs, *flags):
    codes, texts = finish(start(workdir, logs, *flags), logs)
    assert codes == [0, 0], "\n".join(t[-2000:] for t in texts)
    return texts


def one_process(workdir, *extra):
    """The same command as a single process (one CPU device)."""
    return subprocess.run(
        [sys.executable, "-m", "lasad_jax.main", f"--workdir={workdir}", *GENERATOR, *extra],
        cwd=ROOT, capture_output=True, text=True,
        timeout=TIMEOUT, env=dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=one_device_flags()))


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("two_processes")
    run(workdir, workdir / "logs")
    return workdir


# One xdist group: the module fixture (a two-process run) then runs once.
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("multiprocess")]


def test_two_processes_train_as_one_job(uninterrupted):
    with open(uninterrupted / "logs" / "0.log") as f:
        log = f.read()
    assert "over 2 devices in 2 processes" in log
    # Process 0 alone writes the metrics, once per step; the checkpoint holds each
    # process's data position.
    assert [r["step"] for r in metrics_rows(uninterrupted)] == list(range(1, TINY_STEPS + 1))
    data = sorted(os.listdir(uninterrupted / "checkpoints" / str(TINY_STEPS) / "data"))
    assert [f for f in data if f.endswith(".json")] == [
        "process_0-of-2.json", "process_1-of-2.json"]


def test_sigterm_to_one_process_saves_one_step_on_both_and_the_rerun_is_exact(
        tmp_path, uninterrupted):
    """A maintenance event reaches one host: JAX's sync service makes every process stop
    after the same step, both save it and exit 0; the same command resumes and logs what
    an uninterrupted run logs. A single process cannot resume it (its data positions are
    per process)."""
    logs = tmp_path / "logs"
    procs = start(tmp_path, logs)
    # Early: the hosts agree on a step some way after the signal (16 steps in one run
    # here), and it must come before the last.
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline and all(p.poll() is None for p in procs):
        with open(logs / "0.log") as f:
            if "] [3] " in f.read():
                break
        time.sleep(0.2)
    procs[1].send_signal(signal.SIGTERM)
    codes, texts = finish(procs, logs)
    assert codes == [0, 0], "\n".join(t[-2000:] for t in texts)
    saved = [int(d) for d in os.listdir(tmp_path / "checkpoints") if d.isdigit()]
    assert len(saved) == 1 and 3 <= saved[0] < TINY_STEPS, saved
    for text in texts:
        assert f"preempted: saved step {saved[0]}" in text

    texts = run(tmp_path, logs)
    for text in texts:
        assert f"resumed from {tmp_path / 'checkpoints'} at step {saved[0]}" in text
    assert_same_rows(tmp_path, uninterrupted)

    one = one_process(tmp_path, f"--config.num_steps={TINY_STEPS + 5}")
    assert one.returncode == 1, one.stderr[-2000:]
    assert "saved by 2 process(es)" in one.stderr, one.stderr[-2000:]


def test_sampling_in_two_processes_draws_what_one_process_draws(tmp_path, uninterrupted):
    """`--mode=sample` over two processes (the batch split between them, the weights'
    fingerprint gathered from both) names its files with the same digest and draws the
    same images as one process restoring the same checkpoint."""
    sample = ["--mode=sample", "--config.sample.per_class=2", "--config.sample.batch_size=10"]
    two, one = tmp_path / "two", tmp_path / "one"
    for workdir in (two, one):
        shutil.copytree(uninterrupted / "checkpoints", workdir / "checkpoints")
    run(two, tmp_path / "logs", *GENERATOR, *sample)
    proc = one_process(one, *sample)
    assert proc.returncode == 0, proc.stderr[-2000:]
    names = [sorted(os.path.basename(p) for p in glob.glob(str(w / "samples-*")))
             for w in (two, one)]
    assert names[0] == names[1] and len(names[0]) == 2, names
    npz = names[0][0] if names[0][0].endswith(".npz") else names[0][1]
    with np.load(two / npz) as a, np.load(one / npz) as b:
        assert a["arr_0"].shape == (20, 8, 8, 3)
        for key in ("arr_0", "labels", "settings"):
            np.testing.assert_array_equal(a[key], b[key])


def test_the_tokenizer_trains_in_two_processes_and_process_0_exports(tmp_path):
    """The tokenizer's trainer over the same engine: its validation gathers each batch
    from both processes, so both report the same figures; process 0 alone writes the
    metrics, the reconstructions and the exported tokenizer."""
    texts = run(tmp_path, tmp_path / "logs", *TOKENIZER)
    found = [[line.split("] ", 1)[1] for line in text.splitlines()
              if "validation PSNR" in line] for text in texts]
    assert found[0] == found[1] and len(found[0]) == 1, found
    assert [r["step"] for r in metrics_rows(tmp_path)] == [1, 2, 3, 4]
    assert sorted(os.listdir(tmp_path / "tokenizer")) == ["vq_config.json", "vq_params.npz"]
    assert (tmp_path / "reconstructions.png").is_file()
