"""The jobs `--mode` runs, each a short composition of the library's pieces.

    train            jobs/train.py            the generator (task "generator")
    train            jobs/train_tokenizer.py  the VQ tokenizer (task "tokenizer")
    sample           jobs/sample.py           images from the newest checkpoint
    extract          jobs/extract.py          an image dataset -> token codes, once
    reference_stats  jobs/reference_stats.py  Inception statistics of real images
    evaluate         jobs/evaluate.py         FID, sFID, IS, precision, recall

Each module's `run(config, workdir)` takes the typed run of `lasad_jax.config.parse`.
"""

from __future__ import annotations

from typing import Any

import jax

from lasad_jax.config import RunConfig, TokenizerRun
from lasad_jax.validation import check_location

# Modes that walk a whole dataset in each process and write one shared file: N processes
# (a TPU pod's workers, a multi-node SLURM job) would each do all of it and write the
# same file in turn. What to do instead, after "--mode=M runs in one process".
ONE_PROCESS = {
    "extract": "start it on one host without LASAD_MULTIHOST (or as a one-node job), then "
               "copy data.codes_dir where the training hosts read it",
    "reference_stats": "start it on one host without LASAD_MULTIHOST (or as a one-node "
                       "job); the statistics it writes serve every later --mode=evaluate",
}


def run_job(config: RunConfig, mode: str, workdir: str) -> Any:
    """Runs the job of `mode` (for a tokenizer config, its training) and returns its result.

    The job modules are imported here, when chosen: each pulls in only what it needs.
    A workdir URL of an unsupported scheme (`file://`) is refused here, in one line,
    before any job touches it, and so are several processes for a mode of `ONE_PROCESS`.
    """
    check_location("--workdir", workdir)
    if mode in ONE_PROCESS and jax.process_count() > 1:
        raise ValueError(f"--mode={mode} runs in one process, not {jax.process_count()}: "
                         f"{ONE_PROCESS[mode]}")
    if isinstance(config, TokenizerRun):
        from lasad_jax.jobs import train_tokenizer as job
    elif mode == "train":
        from lasad_jax.jobs import train as job
    elif mode == "sample":
        from lasad_jax.jobs import sample as job
    elif mode == "extract":
        from lasad_jax.jobs import extract as job
    elif mode == "reference_stats":
        from lasad_jax.jobs import reference_stats as job
    elif mode == "evaluate":
        from lasad_jax.jobs import evaluate as job
    else:
        raise ValueError(f"unknown mode {mode!r}")
    return job.run(config, workdir)
