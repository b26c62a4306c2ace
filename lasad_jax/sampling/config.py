"""The `sample` block of a config: which images to draw and how.

`per_class` images of each class in `classes` (all classes when empty), generated in
batches of `batch_size`; guidance `cfg_scale` (1.0: off), `temperature`, `top_k` (0:
off), `top_p` (1.0: off); EMA or raw weights; files `{name}-step{step}-{digest}.png`
and `.npz` (`lasad_jax.sampling.sampler.sample_paths`). The checks on the sampling values
are `lasad_jax.sampling.checks`, which `generate` applies too.
"""

from __future__ import annotations

import dataclasses

from lasad_jax.sampling.checks import class_problems as class_id_problems
from lasad_jax.sampling.checks import sampling_problems, top_k_problems
from lasad_jax.validation import Problems, is_int


@dataclasses.dataclass(frozen=True)
class SampleConfig:
    name: str = "samples"
    classes: tuple[int, ...] = ()
    per_class: int = 50
    batch_size: int = 64
    cfg_scale: float = 2.0
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int = 0
    use_ema: bool = True
    grid_scale: int = 1  # the PNG's pixels per image pixel

    def __post_init__(self) -> None:
        p = Problems("sample")
        p.file_name("name", self.name)
        p.check(isinstance(self.classes, tuple) and all(
            is_int(c) and c >= 0 for c in self.classes), "classes",
            f"must be a tuple of class ids >= 0 (empty: all classes), got {self.classes!r}")
        for name in ("per_class", "batch_size", "grid_scale"):
            p.positive_int(name, getattr(self, name))
        # The rules `generate` itself applies, so both say the same.
        p.lines += [f"sample.{line}" for line in sampling_problems(
            cfg_scale=self.cfg_scale, temperature=self.temperature, top_k=self.top_k,
            top_p=self.top_p)]
        p.seed("seed", self.seed)
        p.check(isinstance(self.use_ema, bool), "use_ema",
                f"must be True or False, got {self.use_ema!r}")
        p.raise_if_any()


def class_problems(sample: SampleConfig, num_classes: int, vocab_size: int) -> list[str]:
    """The classes must exist in the dataset, and top-k must fit the vocabulary."""
    return (class_id_problems(sample.classes, num_classes, "sample.classes")
            + top_k_problems(sample.top_k, vocab_size, "sample.top_k"))
