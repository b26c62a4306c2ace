"""Bad input and faults, as a user meets them on the command line: every case ends with
exit status 1 and one `error:` line naming the cause and the fix, no traceback, and no
file changed in the workdir (nor in the other directories the case reads).

The table runs in this process (`lasad_jax.main.cli`, the whole command but absl's
start-up) against small artefacts made once per module: a trained tiny demo workdir, a
checkpoint written before runs recorded their identity (`tests/jobs/old_workdir`), two
VQ tokenizers with the same architecture and different weights, codes extracted with
one of them, reference statistics, and a tokenizer checkpoint. A few real subprocesses
(marked slow) prove the exit status and the absence of a traceback end to end, and a
disk that is really full or read-only (a tmpfs in a private mount namespace, where
`unshare` allows it).
"""

from __future__ import annotations

import dataclasses
import errno
import glob
import io
import json
import os
import shlex
import shutil
import subprocess
import sys
from collections.abc import Callable

import numpy as np
import pytest
from flax import nnx

from lasad_jax import files
from lasad_jax.config import parse
from lasad_jax.evaluation.inception import POOL_DIM, SPATIAL_DIM
from lasad_jax.evaluation.reference import write_reference
from lasad_jax.jobs.reference_stats import reference_settings
from lasad_jax.main import cli
from lasad_jax.parallel import build_mesh
from lasad_jax.parallel.state import place_state
from lasad_jax.tokenizers import IntensityTokenizer
from lasad_jax.tokenizers.vq import VQConfig, VQModel
from lasad_jax.tokenizers.vq.weights import save_vq
from lasad_jax.training.checkpoint import Checkpointer, checkpoint_dir
from lasad_jax.training.vq.step import make_vq_state, tokenizer_identity
from tests.helpers import ROOT, flag_config, hash_tree, tiny_vq_config, write_image_folder

DEMO = f"--config={ROOT / 'configs' / 'demo.py'}"
IMAGENET = f"--config={ROOT / 'configs' / 'imagenet256.py'}"
VQ_DEMO = f"--config={ROOT / 'configs' / 'vq_demo.py'}"
# The demo shrunk to one small layer and 6 steps (tests.helpers.tiny_demo_config), and
# an evaluation of 20 samples.
TINY = ["--config.batch_size=16", "--config.num_steps=6", "--config.model.num_layers=1",
        "--config.model.num_heads=2", "--config.model.dim=32", "--config.model.gate_rank=8",
        "--config.optimizer.warmup_steps=2", "--config.train.log_every=1",
        "--config.train.eval_every=-1", "--config.train.checkpoint_every=3",
        "--config.train.sample_at_end=False", "--config.train.progress_every_secs=0",
        "--config.sample.per_class=2", "--config.sample.batch_size=8",
        "--config.eval.num_samples=20", "--config.eval.part_size=8",
        "--config.eval.inception_batch_size=8"]
# The flags `tests/jobs/old_workdir` was trained with (see test_old_workdir.py).
OLD = ["--config.batch_size=16", "--config.model.num_layers=1", "--config.model.dim=8",
       "--config.model.num_heads=2", "--config.model.gate_rank=2", "--config.num_steps=4",
       "--config.optimizer.warmup_steps=1", "--config.train.eval_every=0",
       "--config.train.checkpoint_every=2", "--config.train.sample_at_end=False",
       "--config.sample.per_class=1", "--config.sample.batch_size=10"]
# tests.helpers.tiny_vq_config as flags.
TINY_VQ = ["--config.vq.ch=16", "--config.vq.ch_mult=(1, 2)", "--config.vq.z_channels=16",
           "--config.vq.codebook_size=32", "--config.vq.norm_groups=8",
           "--config.loss.disc_start=3", "--config.loss.disc_channels=8",
           "--config.loss.disc_layers=1", "--config.batch_size=8", "--config.num_steps=4",
           "--config.optimizer.warmup_steps=1", "--config.train.image_size=16",
           "--config.train.eval_every=0", "--config.train.eval_batch_size=16",
           "--config.train.eval_images=16", "--config.train.checkpoint_every=2"]


@dataclasses.dataclass(frozen=True)
class Paths:
    """Everything the cases read, made once per module."""

    root: str
    trained: str      # the tiny demo, trained 6 steps (checkpoints 3 and 6)
    old: str          # a checkpoint from before runs recorded their identity
    images: str       # an image folder (2 classes)
    vq_a: str         # VQ weights (tiny architecture)
    vq_b: str         # the same architecture, other weights
    codes: str        # the image folder extracted with vq_a
    reference: str    # reference statistics for the tiny demo's samples
    other_ref: str    # reference statistics made with another tokenizer
    tok_run: str      # a tokenizer run's checkpoint (tiny VQ config)

    def extract_flags(self, vq: str) -> list[str]:
        return ["--config.data.image_source=imagefolder", f"--config.data.image_dir={self.images}",
                f"--config.data.codes_dir={self.codes}", "--config.data.num_classes=2",
                "--config.data.augment=flip", "--config.data.shard_size=4",
                "--config.data.extract_batch_size=4", f"--config.tokenizer.checkpoint={vq}",
                "--config.tokenizer.image_size=(16, 16)", "--config.tokenizer.codebook_size=32"]


def run_cli(*argv: str) -> tuple[int, str]:
    """`python -m lasad_jax.main ARGV` in this process: (exit status, stderr)."""
    stderr = io.StringIO()
    saved, sys.stderr = sys.stderr, stderr
    try:
        code = cli(["lasad_jax.main", *argv])
    finally:
        sys.stderr = saved
    return code, stderr.getvalue()


def _stats(seed: int) -> dict:
    rng = np.random.default_rng(seed)
    pool = rng.normal(size=(8, POOL_DIM)).astype(np.float32)
    return {"mu": np.zeros(POOL_DIM), "sigma": np.eye(POOL_DIM), "mu_s": np.zeros(SPATIAL_DIM),
            "sigma_s": np.eye(SPATIAL_DIM), "pool": pool, "preprocess": "adm",
            "num_images": 8, "inception": "random weights (seed 0): not comparable"}


def _vq_weights(path: str, seed: int) -> None:
    config = VQConfig(ch=16, ch_mult=(1, 2), z_channels=16, codebook_size=32, norm_groups=8)
    save_vq(path, nnx.split(VQModel(config, rngs=nnx.Rngs(seed)), nnx.Param)[1], config)


def _tokenizer_checkpoint(workdir: str) -> None:
    """What a tokenizer run of the tiny VQ config leaves after its first save."""
    run = parse(tiny_vq_config(), "train")
    state = make_vq_state(run.vq, run.loss, run.optimizer, batch_size=run.batch_size,
                          seed=run.seed, total_steps=4)[1]
    state = place_state(state, build_mesh(run.mesh))[0]
    with Checkpointer(checkpoint_dir(workdir), identity=tokenizer_identity(run.vq, run.loss)
                      ) as checkpointer:
        checkpointer.save(2, state, force=True)


# The module is one `xdist_group`: a module fixture runs once per worker that needs it,
# and `paths` trains, extracts and saves for 35 s on 2 cores.
pytestmark = pytest.mark.xdist_group("faults_paths")


@pytest.fixture(scope="module")
def paths(tmp_path_factory) -> Paths:
    root = tmp_path_factory.mktemp("faults")
    p = Paths(root=str(root), trained=str(root / "trained"), old=str(root / "old"),
              images=str(root / "images"), vq_a=str(root / "vq_a"), vq_b=str(root / "vq_b"),
              codes=str(root / "codes"), reference=str(root / "refs" / "reference.npz"),
              other_ref=str(root / "refs" / "other_tokenizer.npz"),
              tok_run=str(root / "tok_run"))
    assert run_cli(DEMO, f"--workdir={p.trained}", *TINY)[0] == 0
    shutil.copytree(ROOT / "tests" / "jobs" / "old_workdir", p.old)
    for split in ("train", "val"):
        write_image_folder(root / "images", split)
    _vq_weights(p.vq_a, seed=0)
    _vq_weights(p.vq_b, seed=1)
    code, log = run_cli(IMAGENET, f"--workdir={root / 'unused'}", "--mode=extract",
                        *p.extract_flags(p.vq_a))
    assert code == 0, log
    demo = parse(flag_config(DEMO, *TINY), "reference_stats")
    made = reference_settings(demo, IntensityTokenizer(levels=17, image_size=(8, 8), channels=1))
    os.makedirs(os.path.dirname(p.reference))
    write_reference(p.reference, {**_stats(0), "settings": made})
    other = IntensityTokenizer(levels=9, image_size=(8, 8), channels=1).fingerprint
    write_reference(p.other_ref, {**_stats(1), "settings": {**made, "tokenizer": other}})
    _tokenizer_checkpoint(p.tok_run)
    return p


@dataclasses.dataclass(frozen=True)
class Case:
    name: str
    args: Callable[[Paths, str], list[str]]  # (paths, a fresh directory) -> argv
    words: tuple[str, ...]                   # in the error line, in this order
    # Makes the fault (returns what undoes it, or None; monkeypatches are undone anyway).
    setup: Callable[[Paths, str, pytest.MonkeyPatch], Callable[[], None] | None] | None = None
    watched: Callable[[Paths], list[str]] = lambda p: [p.trained]


def trained(*args: str) -> Callable[[Paths, str], list[str]]:
    return lambda p, fresh: [DEMO, f"--workdir={p.trained}", *TINY, *args]


def in_fresh(*args: str, config: str = DEMO) -> Callable[[Paths, str], list[str]]:
    return lambda p, fresh: [config, f"--workdir={fresh}", *TINY, *args]


def old(*args: str) -> Callable[[Paths, str], list[str]]:
    return lambda p, fresh: [DEMO, f"--workdir={p.old}", *OLD, *args]


def extract(vq: str, *args: str) -> Callable[[Paths, str], list[str]]:
    return lambda p, fresh: [IMAGENET, f"--workdir={fresh}", "--mode=extract",
                             *p.extract_flags(getattr(p, vq) if vq else ""), *args]


def tokenizer_run(*args: str) -> Callable[[Paths, str], list[str]]:
    return lambda p, fresh: [VQ_DEMO, f"--workdir={p.tok_run}", *TINY_VQ, *args]


def corrupt_all(p: Paths, fresh: str, _) -> None:
    """A copy of the trained workdir whose every checkpoint is truncated."""
    shutil.copytree(p.trained, os.path.join(fresh, "run"))
    for path in glob.glob(os.path.join(fresh, "run", "checkpoints", "*", "**", "*"),
                          recursive=True):
        if os.path.isfile(path) and not path.endswith("_CHECKPOINT_METADATA"):
            os.truncate(path, os.path.getsize(path) // 3)


def read_only(p: Paths, fresh: str, monkeypatch) -> Callable[[], None] | None:
    """The workdir and the codes refuse new files. chmod does not stop root, so as root
    every new file is refused as on a read-only disk (the real one: the last test)."""
    if os.geteuid() != 0:
        for path in (p.trained, p.codes):
            os.chmod(path, 0o555)
        return lambda: [os.chmod(path, 0o755) for path in (p.trained, p.codes)]

    def refuse(*_, **__):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    monkeypatch.setattr(files.tempfile, "mkstemp", refuse)
    return None


def disk_nearly_full(p: Paths, fresh: str, monkeypatch) -> None:
    monkeypatch.setattr(files, "free_bytes", lambda directory: 1000)


def disk_fills_while_writing(p: Paths, fresh: str, monkeypatch) -> None:
    """The disk reports room, then a write fails with ENOSPC (another job filled it)."""
    real = files._temporary

    class Full(io.RawIOBase):
        def __init__(self, f):
            self.f = f

        def writable(self):
            return True

        def seekable(self):
            return True

        def tell(self):
            return self.f.tell()

        def seek(self, offset, whence=0):
            return self.f.seek(offset, whence)

        def write(self, data):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        def close(self):
            self.f.close()
            super().close()

    monkeypatch.setattr(files, "_temporary", lambda path: (lambda f, tmp: (Full(f), tmp))(
        *real(path)))


def broken_config(p: Paths, fresh: str, _) -> None:
    with open(os.path.join(fresh, "broken.py"), "w") as f:
        f.write("def get_config():\n    return 1 / 0\n")
    with open(os.path.join(fresh, "empty.py"), "w") as f:
        f.write("CONFIG = {}\n")


def parts_of_step_3(p: Paths, fresh: str, _) -> None:
    """An evaluation started from checkpoint 3 of the same run, in a copy of the workdir."""
    shutil.copytree(p.trained, os.path.join(fresh, "run"))
    part_dir = os.path.join(fresh, "run", "eval", "eval")
    os.makedirs(part_dir)
    fingerprint = IntensityTokenizer(levels=17, image_size=(8, 8), channels=1).fingerprint
    with open(os.path.join(part_dir, "settings.json"), "w") as f:
        json.dump({"checkpoint_step": 3, "num_samples": 20, "seed": 0, "batch_size": 8,
                   "cfg_scale": 2.0, "temperature": 1.0, "top_k": 0, "top_p": 1.0,
                   "use_ema": True, "mixer": "lasad", "tokenizer": fingerprint}, f)


def scores_against_another_reference(p: Paths, fresh: str, _) -> None:
    """The scores of the same samples against ADM's reference batch."""
    shutil.copytree(p.trained, os.path.join(fresh, "run"))
    os.makedirs(os.path.join(fresh, "run", "eval"))
    fingerprint = IntensityTokenizer(levels=17, image_size=(8, 8), channels=1).fingerprint
    with open(os.path.join(fresh, "run", "eval", "eval.json"), "w") as f:
        json.dump({"checkpoint_step": 6, "num_samples": 20, "seed": 0, "batch_size": 8,
                   "cfg_scale": 2.0, "temperature": 1.0, "top_k": 0, "top_p": 1.0,
                   "use_ema": True, "mixer": "lasad", "tokenizer": fingerprint,
                   "reference": "/elsewhere/VIRTUAL.npz",
                   "inception": "random weights (seed 0): not comparable", "fid": 1.0}, f)


def other_reference_stats(p: Paths, fresh: str, _) -> None:
    shutil.copytree(p.trained, os.path.join(fresh, "run"))
    shutil.copy(p.reference, os.path.join(fresh, "run", "reference_stats.npz"))


def garbage_reference(p: Paths, fresh: str, _) -> None:
    with open(os.path.join(fresh, "garbage.npz"), "wb") as f:
        f.write(b"not a zip file")


def vq_without_files(p: Paths, fresh: str, _) -> None:
    os.makedirs(os.path.join(fresh, "vq_empty"))


def in_copy(*args: str) -> Callable[[Paths, str], list[str]]:
    return lambda p, fresh: [DEMO, f"--workdir={os.path.join(fresh, 'run')}", *TINY, *args]


def watch_fresh(p: Paths) -> list[str]:
    return [p.trained]


REF = lambda p: f"--config.eval.reference={p.reference}"  # noqa: E731

CASES = [
    # -- the command line and the config file (any mode)
    Case("unknown config file", lambda p, f: ["--config=configs/nope.py", f"--workdir={f}"],
         ("--config=configs/nope.py: no such file", "demo.py")),
    Case("misspelled config file", lambda p, f: [f"--config={ROOT}/configs/dem.py",
                                                 f"--workdir={f}"],
         ("no such file; did you mean", "configs/demo.py?")),
    Case("config file that raises", lambda p, f: [f"--config={f}/broken.py", f"--workdir={f}"],
         ("broken.py fails to load: ZeroDivisionError: division by zero",), broken_config),
    Case("config file without get_config", lambda p, f: [f"--config={f}/empty.py",
                                                         f"--workdir={f}"],
         ("empty.py has no get_config() function",), broken_config),
    Case("unknown top-level field", in_fresh("--config.num_step=3"),
         ("config has no field 'num_step'; did you mean --config.num_steps?",)),
    Case("unknown field of a block", in_fresh("--config.model.mixr=softmax"),
         ("config.model has no field 'mixr'; did you mean --config.model.mixer?",)),
    Case("unknown block", in_fresh("--config.modle.dim=64"),
         ("config has no field 'modle'; did you mean --config.model?",)),
    Case("int field given text", in_fresh("--config.num_steps=abc"),
         ("--config.num_steps=abc: num_steps takes an int, got 'abc'",)),
    Case("float field given text", in_fresh("--config.optimizer.lr=fast"),
         ("optimizer.lr takes a number, got 'fast'",)),
    Case("bool field given text", in_fresh("--config.train.sample_at_end=maybe"),
         ("train.sample_at_end takes True or False, got 'maybe'",)),
    Case("placeholder field given text", in_fresh("--config.model.chunk_size=big"),
         ("model.chunk_size takes an int, got 'big'",)),
    Case("a block set to a value", in_fresh("--config.model=3"),
         ("--config.model is a block: set its fields",)),
    Case("unknown mode", in_fresh("--mode=infer"), ("--mode=infer", "one of <train|sample",)),
    Case("no workdir", lambda p, f: [DEMO], ("--workdir is required",)),
    Case("unknown flag", in_fresh("--workdr=/tmp"), ("Unknown command line flag 'workdr'",)),
    Case("stray argument", in_fresh("now"), ("unexpected arguments ['now']",)),
    Case("negative run length names num_steps", in_fresh("--config.num_steps=-5"),
         ("config.num_steps must be an int >= 0, got -5",)),
    Case("unknown mixer", in_fresh("--config.model.mixer=mamba"),
         ("config.model.mixer must be one of", "'softmax'), got 'mamba'")),
    Case("every bad sampling value at once", trained("--mode=sample", "--config.sample.top_p=1.5",
                                                     "--config.sample.temperature=0"),
         ("the config cannot run:",)),  # the two problems follow, one line each
    Case("class id out of range", trained("--mode=sample", "--config.sample.classes=(3, 12)"),
         ("config.sample.classes must be class ids in [0, 10)", "got [12]")),
    Case("the null class as a class id", trained("--mode=sample", "--config.sample.classes=10"),
         ("in [0, 10) (10 is the null class of guidance", "got [10]")),
    Case("top-k above the vocabulary", trained("--mode=sample", "--config.sample.top_k=50"),
         ("config.sample.top_k=50 is larger than the vocabulary (17 tokens)",)),
    # -- train
    Case("resume with another model size", trained("--config.num_steps=9",
                                                   "--config.model.dim=64"),
         ("checkpoint at step 6", "was written by another run: model.dim is 32 there, 64 here",
          "use the config it was trained with")),
    Case("resume with more layers", trained("--config.num_steps=9", "--config.model.num_layers=2"),
         ("model.num_layers is 1 there, 2 here",)),
    Case("resume with another tokenizer", trained("--config.num_steps=9",
                                                  "--config.tokenizer.levels=9"),
         ("model.vocab_size (from the tokenizer's vocabulary) is 17 there, 9 here",
          "tokenizer is sha256:")),
    Case("resume with another batch size", trained("--config.num_steps=9",
                                                   "--config.batch_size=8"),
         ("checkpoint at step 6", "data_order.batch_size (from config.batch_size) is 16 there, "
          "8 here", "use the config it was trained with")),
    Case("resume with another seed", trained("--config.num_steps=9", "--config.seed=3"),
         ("data_order.seed (from config.seed) is 0 there, 3 here",)),
    Case("resume with another train/val split", trained("--config.num_steps=9",
                                                        "--config.data.seed=1"),
         ("data_order.split_seed (from config.data.seed) is 0 there, 1 here",)),
    # As many examples of 8 x 8 grey images as the digits' training split: only which
    # examples they are tells them apart.
    Case("resume on another dataset of the same size", trained(
        "--config.num_steps=9", "--config.data.name=shapes", "--config.data.size=8",
        "--config.data.num_train=1618"),
         ("checkpoint at step 6", "data_order.dataset (from the training examples, config.data) "
          "is sha256:", "use the config it was trained with")),
    Case("resume an old checkpoint with another model size", old("--config.num_steps=6",
                                                                 "--config.model.dim=16"),
         ("checkpoint at step 2", "does not fit this model:", "is (8, 2) there, (16, 2) here",
          "too old to record which fields"), watched=lambda p: [p.old]),
    Case("resume when every checkpoint is corrupt", in_copy("--config.num_steps=9"),
         ("no checkpoint in", "can be restored (step 6:", "step 3:"), corrupt_all),
    Case("workdir is a file", lambda p, f: [DEMO, f"--workdir={p.trained}/metrics.jsonl", *TINY],
         ("--workdir", "metrics.jsonl is a file, not a directory", "choose another")),
    Case("read-only workdir", trained("--config.num_steps=9"),
         ("cannot write", "make it writable"), read_only),
    Case("full disk, new run", in_fresh(),
         ("no space left for the checkpoints of this run in", "it needs about",
          "1.0 KB are free"), disk_nearly_full, watch_fresh),
    Case("full disk, resumed run", trained("--config.num_steps=9"),
         ("no space left for the checkpoints of this run", "are free"), disk_nearly_full),
    Case("missing codes", in_fresh("--config.data.name=extracted",
                                   "--config.data.codes_dir=/no/codes"),
         ("config.data.codes_dir", "--mode=extract")),
    # -- sample
    Case("sample without a checkpoint", in_fresh("--mode=sample"),
         ("no checkpoint in", "train first with --mode=train")),
    Case("sample with another model size", trained("--mode=sample", "--config.model.dim=64"),
         ("model.dim is 32 there, 64 here",)),
    Case("sample with another mixer of the same shapes",
         trained("--mode=sample", "--config.model.mixer=lasad_row"),
         ("model.mixer is 'lasad' there, 'lasad_row' here",)),
    Case("sample with another tokenizer", trained("--mode=sample", "--config.tokenizer.levels=9"),
         ("tokenizer is sha256:",)),
    Case("sample an old checkpoint with another mixer", old("--mode=sample",
                                                            "--config.model.mixer=softmax"),
         ("does not fit this model", "mixer.col_logit is there, not here"),
         watched=lambda p: [p.old]),
    Case("sample when every checkpoint is corrupt", in_copy("--mode=sample"),
         ("no checkpoint in", "can be restored"), corrupt_all),
    Case("sample into a read-only workdir", trained("--mode=sample"),
         ("cannot write", "trained", "make it writable"), read_only),
    Case("sample onto a full disk", trained("--mode=sample"),
         ("no space left for the samples", "samples-step6-", ".npz", "are free"),
         disk_nearly_full),
    Case("the disk fills while sampling", trained("--mode=sample"),
         ("no space left for writing", "samples-step6-", ".npz: it needs"),
         disk_fills_while_writing),
    Case("sample mode on a tokenizer config", tokenizer_run("--mode=sample"),
         ("--mode=sample does not apply to a tokenizer config",), watched=lambda p: [p.tok_run]),
    Case("sample without the VQ weights", lambda p, f: [
        IMAGENET, f"--workdir={f}", "--mode=sample", "--config.data.name=codes",
        "--config.data.codes_dir=/x", "--config.tokenizer.checkpoint=/no/vq"],
         ("config.tokenizer.checkpoint='/no/vq' does not exist", "llamagen_vq")),
    # -- extract
    Case("extract without an output directory", extract("vq_a", "--config.data.codes_dir="),
         ("config.data.codes_dir",), watched=lambda p: [p.codes]),
    Case("extract a missing image folder", extract("vq_a", "--config.data.image_dir=/no/images"),
         ("/no/images",), watched=lambda p: [p.codes]),
    Case("extract without the VQ weights", extract(""),
         ("tokenizer.checkpoint is empty: encoding images needs the VQ-16 tokenizer",),
         watched=lambda p: [p.codes]),
    Case("extract with an empty VQ directory",
         lambda p, f: extract("vq_a")(p, f)[:-3] + [f"--config.tokenizer.checkpoint={f}/vq_empty",
                                                     "--config.tokenizer.image_size=(16, 16)",
                                                     "--config.tokenizer.codebook_size=32"],
         ("vq_empty", "vq_config.json"), vq_without_files, lambda p: [p.codes]),
    Case("extract again with other VQ weights", extract("vq_b"),
         ("train-manifest.json holds codes of tokenizer sha256:", "this run's tokenizer is "
          "sha256:", "vq_b", "must not be mixed", "empty directory"),
         watched=lambda p: [p.codes, p.vq_a, p.vq_b]),
    Case("extract into a read-only directory",
         lambda p, f: extract("vq_a")(p, f) + [f"--config.data.codes_dir={p.codes}/new"],
         ("cannot write", "make it writable"), read_only, lambda p: [p.codes]),
    # -- reference_stats and evaluate
    Case("evaluate without reference statistics", trained("--mode=evaluate"),
         ("no reference statistics at", "reference_stats.npz", "--mode=reference_stats")),
    Case("evaluate without the Inception weights", trained("--mode=evaluate",
                                                          "--config.eval.inception=/no/fid.npz"),
         ("config.eval.inception='/no/fid.npz' is not a file", "convert")),
    Case("evaluate against a file that is not npz", lambda p, f: trained(
        "--mode=evaluate", f"--config.eval.reference={f}/garbage.npz")(p, f),
         ("garbage.npz is not an .npz file (a zip archive)",), garbage_reference),
    Case("evaluate against a reference of another tokenizer", lambda p, f: trained(
        "--mode=evaluate", f"--config.eval.reference={p.other_ref}")(p, f),
         ("other_tokenizer.npz was made with tokenizer sha256:", "this run decodes with sha256:",
          "--mode=reference_stats")),
    Case("evaluate against a reference of another image size", lambda p, f: [
        DEMO, f"--workdir={p.trained}", *TINY, "--mode=evaluate", REF(p),
        "--config.tokenizer.image_size=(16, 16)", "--config.data.name=shapes"],
         ("reference.npz holds statistics of [8, 8] images, but the samples are [16, 16]",)),
    Case("evaluation parts of another checkpoint", lambda p, f: in_copy(
        "--mode=evaluate", REF(p))(p, f),
         ("eval/eval holds samples made with other settings (checkpoint_step: 3 -> 6)",
          "set another config.eval.name"), parts_of_step_3),
    Case("scores against another reference", lambda p, f: in_copy("--mode=evaluate", REF(p))(p, f),
         ("eval.json holds the scores of another evaluation", "reference: '/elsewhere/VIRTUAL.npz'",
          "set another config.eval.name"), scores_against_another_reference),
    Case("evaluate with another model size", lambda p, f: trained(
        "--mode=evaluate", "--config.model.dim=64", REF(p))(p, f),
         ("checkpoint at step 6", "model.dim is 32 there, 64 here",)),
    Case("reference statistics over other ones", in_copy("--mode=reference_stats",
                                                         "--config.eval.reference_split=val"),
         ("reference_stats.npz holds other reference statistics", "split: 'train' -> 'val'",
          "move it away"), other_reference_stats),
    Case("reference statistics of an unknown split", trained("--mode=reference_stats",
                                                             "--config.eval.reference_split=test"),
         ("config.eval.reference_split must be one of ('train', 'val'), got 'test'",)),
    # -- the tokenizer task
    Case("tokenizer config, misspelled field", tokenizer_run("--config.vq.chh=32"),
         ("config.vq has no field 'chh'; did you mean --config.vq.ch?",),
         watched=lambda p: [p.tok_run]),
    Case("tokenizer image size against its downsampling", tokenizer_run(
        "--config.train.image_size=17"),
         ("config.train.image_size=17 must be a multiple of the tokenizer's downsampling "
          "factor 2",), watched=lambda p: [p.tok_run]),
    Case("tokenizer without the LPIPS weights", tokenizer_run("--config.loss.perceptual_weight=1"),
         ("config.loss.perceptual_weights",), watched=lambda p: [p.tok_run]),
    Case("resume a tokenizer with another width", tokenizer_run("--config.vq.ch=32"),
         ("checkpoint at step 2", "vq.ch is 16 there, 32 here"), watched=lambda p: [p.tok_run]),
    Case("tokenizer run onto a full disk",
         lambda p, f: [VQ_DEMO, f"--workdir={f}", *TINY_VQ],
         ("no space left for the checkpoints of this run", "are free"), disk_nearly_full,
         lambda p: [p.tok_run]),
]


def _error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


def _error_text(stderr: str) -> str:
    """The error line and the problems listed below it (a config with several)."""
    lines = stderr.splitlines()
    at = next(i for i, line in enumerate(lines) if line.startswith("error:"))
    block = [lines[at]]
    block += [line for line in lines[at + 1:] if line.startswith("  - ")][:50]
    return "\n".join(block)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input_is_one_line_and_changes_nothing(case, paths, tmp_path, monkeypatch):
    fresh = str(tmp_path)
    undo = case.setup(paths, fresh, monkeypatch) if case.setup is not None else None
    argv = case.args(paths, fresh)
    watched = [*case.watched(paths), fresh]
    before = hash_tree(*watched)
    try:
        code, stderr = run_cli(*argv)
    finally:
        monkeypatch.undo()
        if undo is not None:
            undo()
    assert code == 1, stderr[-3000:]
    assert len(_error_lines(stderr)) == 1, stderr[-3000:]
    text, at = _error_text(stderr), 0
    for word in case.words:  # the words appear in this order
        found = text.find(word, at)
        assert found >= 0, (word, text)
        at = found + len(word)
    assert "Traceback" not in stderr
    assert hash_tree(*watched) == before


def test_the_table_covers_every_job():
    assert len(CASES) >= 40
    modes = {"train": 0, "sample": 0, "extract": 0, "evaluate": 0, "reference_stats": 0}
    for case in CASES:
        for mode in modes:
            if any(f"--mode={mode}" in a for a in case.args(_FAKE, "/fresh")):
                modes[mode] += 1
        if not any(a.startswith("--mode=") for a in case.args(_FAKE, "/fresh")):
            modes["train"] += 1
    tokenizer = sum(VQ_DEMO in case.args(_FAKE, "/fresh") for case in CASES)
    assert min(modes.values()) >= 2 and tokenizer >= 4, (modes, tokenizer)


_FAKE = Paths(*(f"/{f.name}" for f in dataclasses.fields(Paths)))


def test_every_bad_sampling_value_is_listed(paths):
    code, stderr = run_cli(DEMO, f"--workdir={paths.trained}", *TINY, "--mode=sample",
                           "--config.sample.top_p=1.5", "--config.sample.temperature=0")
    lines = stderr.splitlines()
    at = lines.index("error: the config cannot run:")
    assert lines[at + 1:at + 3] == [
        "  - config.sample.temperature must be > 0 (use top_k=1 for greedy), got 0.0",
        "  - config.sample.top_p must be in (0, 1] (1.0: off), got 1.5"]


# -- end to end: real processes, a real full or read-only disk


def _main(*argv: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lasad_jax.main", *argv], cwd=ROOT,
                          capture_output=True, text=True, timeout=600,
                          env=dict(os.environ, JAX_PLATFORMS="cpu", **(env or {})))


@pytest.mark.slow
def test_the_command_exits_1_with_one_line_and_no_traceback(paths):
    for argv, words in (
            ([DEMO, f"--workdir={paths.trained}", *TINY, "--config.model.mixr=softmax"],
             "did you mean --config.model.mixer?"),
            ([DEMO, f"--workdir={paths.trained}", *TINY, "--config.num_steps=9",
              "--config.model.dim=64"], "model.dim is 32 there, 64 here"),
            (["--config=configs/nope.py", "--workdir=/tmp/x"], "no such file")):
        before = hash_tree(paths.trained)
        proc = _main(*argv)
        assert proc.returncode == 1, proc.stderr[-3000:]
        assert "Traceback" not in proc.stderr
        lines = _error_lines(proc.stderr)
        assert len(lines) == 1 and words in lines[0], proc.stderr[-3000:]
        assert hash_tree(paths.trained) == before
    # LASAD_TRACEBACK=1 shows where it came from.
    proc = _main(DEMO, f"--workdir={paths.trained}", *TINY, "--config.num_steps=9",
                 "--config.model.dim=64", env={"LASAD_TRACEBACK": "1"})
    assert proc.returncode == 1 and "Traceback" in proc.stderr
    assert "CheckpointMismatch" in proc.stderr


def _can_mount() -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(["unshare", "-rm", "sh", "-c", "mount -t tmpfs -o size=64k tmpfs "
                            "\"$(mktemp -d)\""], capture_output=True)
    return probe.returncode == 0


def _in_tmpfs(script: str, size: str, disk: str) -> subprocess.CompletedProcess:
    """`script` (sh) in a private mount namespace with a tmpfs of `size` on $DISK
    (the directory `disk`, empty again once the namespace ends)."""
    os.makedirs(disk, exist_ok=True)
    env = dict(os.environ, JAX_PLATFORMS="cpu", DISK=disk, PY=sys.executable,
               PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    command = f"mount -t tmpfs -o size={size} tmpfs {disk} && cd {ROOT} && {script}"
    return subprocess.run(["unshare", "-rm", "sh", "-c", command], capture_output=True,
                          text=True, timeout=600, env=env)


@pytest.mark.slow
@pytest.mark.skipif(not _can_mount(), reason="needs unshare with user and mount namespaces")
def test_a_real_full_disk_and_a_real_read_only_disk(paths, tmp_path):
    # A 200 KB disk: the run stops before it writes anything, naming the bytes.
    train = " ".join(shlex.quote(a) for a in [DEMO, *TINY])
    full = _in_tmpfs(f'$PY -m lasad_jax.main {train} --workdir=$DISK/run; echo "exit=$?"; '
                     'find $DISK -type f | wc -l', "200k", str(tmp_path / "full"))
    out = full.stdout + full.stderr
    assert "exit=1" in out and "Traceback" not in out, out[-3000:]
    lines = _error_lines(full.stderr)
    assert len(lines) == 1 and "no space left for the checkpoints of this run" in lines[0], out
    assert "KB are free" in lines[0] and full.stdout.strip().endswith("0"), out[-3000:]
    # The trained workdir on a disk made read-only: sampling names the path.
    sample = " ".join(shlex.quote(a) for a in [DEMO, *TINY, "--mode=sample"])
    ro = _in_tmpfs(f"cp -r {paths.trained} $DISK/run && mount -o remount,ro $DISK && "
                   f"$PY -m lasad_jax.main {sample} --workdir=$DISK/run; echo \"exit=$?\"",
                   "64m", str(tmp_path / "ro"))
    out = ro.stdout + ro.stderr
    assert "exit=1" in out and "Traceback" not in out, out[-3000:]
    lines = _error_lines(ro.stderr)
    assert len(lines) == 1 and f"cannot write {tmp_path}/ro/run: read-only file system" in \
        lines[0], out


def test_a_full_disk_inside_the_checkpoint_library_is_one_line():
    """Should the disk fill between the free-space check and a save, Orbax's error (the
    text of TensorStore's, after its own logged tracebacks) still ends as one line."""
    from lasad_jax.main import user_message

    orbax = ValueError('RESOURCE_EXHAUSTED: Error writing "params.w/0" in OCDBT database at '
                       'local file "/w/checkpoints/3.orbax-checkpoint-tmp/state/": Failed to '
                       "write 220635 bytes to file 6: No space left on device "
                       "[os_error_code='28']")
    wrapped = RuntimeError("Save Finalize thread (save_finalize) failed.")
    wrapped.__cause__ = orbax
    assert user_message(wrapped) == (
        "cannot write /w/checkpoints/3.orbax-checkpoint-tmp/state/: no space left on device; "
        "free space or make it writable, or use a --workdir on another disk")
    assert user_message(PermissionError(errno.EACCES, "Permission denied", "/w/x.json")) == (
        "cannot write /w/x.json: permission denied; make it writable or use a --workdir (or "
        "output path) that is")
    assert user_message(KeyError("a bug")) is None  # keeps its traceback


def test_a_config_file_may_take_an_argument(tmp_path):
    from lasad_jax.config import load_config_file

    path = tmp_path / "sized.py"
    path.write_text("from lasad_jax.config import default_config\n\n"
                    "def get_config(steps):\n    config = default_config()\n"
                    "    config.num_steps = int(steps)\n    return config\n")
    assert load_config_file(f"{path}:7").num_steps == 7
