"""The VQ tokenizer's architecture (the `vq` block of a tokenizer config), kept apart from
the modules so the building blocks and the model both read it without importing each
other."""

from __future__ import annotations

import dataclasses
from typing import Any

from lasad_jax.validation import Problems, block_from_mapping, is_int


@dataclasses.dataclass(frozen=True)
class VQConfig:
    """Architecture of the VQ tokenizer; the defaults are LlamaGen's VQ-16."""

    ch: int = 128
    ch_mult: tuple[int, ...] = (1, 1, 2, 2, 4)
    encoder_res_blocks: int = 2
    decoder_res_blocks: int = 3
    z_channels: int = 256
    codebook_size: int = 16384
    codebook_dim: int = 8
    commit_beta: float = 0.25
    norm_groups: int = 32
    norm_eps: float = 1e-6
    in_channels: int = 3
    out_channels: int = 3

    def __post_init__(self) -> None:
        object.__setattr__(self, "ch_mult", tuple(self.ch_mult))
        p = Problems("vq")
        sizes = ("ch", "encoder_res_blocks", "decoder_res_blocks", "z_channels",
                 "codebook_size", "codebook_dim", "norm_groups", "in_channels", "out_channels")
        ints = all(p.positive_int(name, getattr(self, name)) for name in sizes)
        mult = p.check(bool(self.ch_mult) and all(is_int(m) and m >= 1 for m in self.ch_mult),
                       "ch_mult", f"must be a non-empty tuple of positive ints, got "
                       f"{self.ch_mult!r}")
        if ints and mult:
            # The encoder's first block normalises `ch` itself, whatever ch_mult holds.
            widths = {self.ch} | {self.ch * m for m in self.ch_mult}
            bad = sorted(w for w in widths if w % self.norm_groups)
            p.check(not bad, "ch", f"and ch * ch_mult[i] (every normalised width) must be "
                    f"divisible by norm_groups={self.norm_groups}; got widths {bad} "
                    f"(ch={self.ch}, ch_mult={self.ch_mult})")
        p.number("norm_eps", self.norm_eps, low=0.0, low_open=True)
        p.number("commit_beta", self.commit_beta, low=0.0)
        p.raise_if_any()

    @property
    def downsample_factor(self) -> int:
        """Image pixels per code along each axis: one halving per level but the last."""
        return 2 ** (len(self.ch_mult) - 1)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["ch_mult"] = list(self.ch_mult)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> VQConfig:
        """Builds a config from `to_dict` output, naming any field it does not know."""
        return block_from_mapping(cls, "vq", d)
