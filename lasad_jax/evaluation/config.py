"""The `eval` block of a config: the ADM protocol's sample batch and its network.

`--mode=reference_stats` writes the Inception statistics of the training (or `val`)
images; `--mode=evaluate` draws `num_samples` images with the `sample` block's settings
(resumably, `part_size` at a time) and scores them against `reference` (empty: the
workdir's own `reference_stats.npz`) with the Inception weights of `inception` (a
converted `.npz`, or "random" to test the pipeline where the real weights cannot ship),
after resizing them to `image_size` when that is set (`evaluation.resize`).
"""

from __future__ import annotations

import dataclasses
import os

from lasad_jax import files
from lasad_jax.evaluation.inception import PREPROCESS_MODES
from lasad_jax.evaluation.metrics import NEIGHBOURS_K
from lasad_jax.evaluation.weights import CONVERT_COMMAND, RANDOM_INCEPTION, WEIGHTS_URL
from lasad_jax.validation import Problems, is_int

REFERENCE_SPLITS = ("train", "val")


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    name: str = "eval"
    num_samples: int = 50_000
    seed: int = 0
    part_size: int = 5000
    inception: str = ""
    preprocess: str = "adm"
    reference: str = ""
    reference_split: str = "train"
    reference_limit: int = 0  # reference_stats: a seeded random subset this large (0: all)
    # Samples (and reference_stats' images) are resized to image_size x image_size before
    # scoring; 0 keeps the tokenizer's size. 256 scores 384 px models on ADM's batch.
    image_size: int = 0
    inception_batch_size: int = 200

    def __post_init__(self) -> None:
        p = Problems("eval")
        p.file_name("name", self.name)
        for name in ("num_samples", "part_size", "inception_batch_size"):
            p.positive_int(name, getattr(self, name))
        # Checked here, not after all the sampling: precision and recall take each
        # feature's k-th nearest neighbour among the others.
        least = NEIGHBOURS_K + 1
        why = f"precision/recall need {NEIGHBOURS_K} nearest neighbours of each image"
        p.check(not is_int(self.num_samples) or not 1 <= self.num_samples < least,
                "num_samples", f"must be >= {least} ({why}), got {self.num_samples!r}")
        p.check(not is_int(self.reference_limit) or not 1 <= self.reference_limit < least,
                "reference_limit", f"must be 0 (all images) or >= {least} ({why}), got "
                f"{self.reference_limit!r}")
        p.int_at_least("reference_limit", self.reference_limit, 0)
        p.check(is_int(self.image_size) and self.image_size >= 0, "image_size",
                f"must be 0 (the samples' own size) or a positive int, got "
                f"{self.image_size!r}")
        p.seed("seed", self.seed)
        p.string("inception", self.inception)
        p.location("reference", self.reference)
        p.one_of("preprocess", self.preprocess, PREPROCESS_MODES)
        p.one_of("reference_split", self.reference_split, REFERENCE_SPLITS)
        p.raise_if_any()


def run_problems(ev: EvalConfig, mode: str) -> list[str]:
    """The files `mode` reads: the Inception weights, and for `evaluate` a reference
    named in the config (the workdir's own is checked when the job starts)."""
    problems = []
    if ev.inception != RANDOM_INCEPTION and not os.path.isfile(ev.inception):
        problems.append(f"eval.inception={ev.inception!r} is not a file: download "
                        f"{WEIGHTS_URL} and convert it with `{CONVERT_COMMAND}`, or use "
                        "'random' to test the pipeline")
    # A gs:// reference is read from a local copy when the job starts (files.local_file).
    if mode == "evaluate" and ev.reference and (not files.exists(ev.reference)
                                                or files.isdir(ev.reference)):
        problems.append(f"eval.reference={ev.reference!r} is not a file")
    return problems
