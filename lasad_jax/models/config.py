"""Model hyper-parameters: one frozen dataclass, built from the `model` block of a config.

The model never reads an ml_collections ConfigDict directly: `ModelConfig.from_config`
checks every field once, with an error that names the field and its valid values, and
the modules then take plain typed values.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from lasad_jax import ops
from lasad_jax.validation import Problems, is_int

MIXERS = ("lasad", "lasad_row", "linear_1d", "linear", "softmax")
FEATURE_MAPS = ("identity", "silu", "elu1", "relu")
GATES = ("sigmoid", "silu", "none")
POS_ENCODINGS = ("rope2d", "none")
DTYPES = ("float32", "bfloat16")
# What a block keeps for the backward pass (`LASADGen.__call__`): "none" leaves it to XLA
# (everything the backward pass reads), "dots" keeps the outputs of its weight matmuls and
# recomputes the rest (norms, activations, RoPE, the token mixer), "full" keeps only the
# block's input and recomputes the whole block.
REMAT = ("none", "dots", "full")

# name -> (layers, heads, dim). B..3B are LlamaGen's GPT presets (docs/model.md); `tiny`
# is ours, for CPU tests, the demo and benchmarks.
PRESETS: dict[str, tuple[int, int, int]] = {
    "tiny": (4, 4, 128),
    "B": (12, 12, 768),
    "L": (24, 16, 1024),
    "XL": (36, 20, 1280),
    "XXL": (48, 24, 1536),
    "3B": (24, 32, 3200),
}
PRESET_FIELDS = ("num_layers", "num_heads", "dim")  # what a preset's numbers fill, in order


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Everything that fixes the parameter shapes and the forward computation.

    `grid` is the (rows, columns) of the token grid; `num_prefix` is fixed at 1 (the
    class slot). `gate_rank` > 0 makes the output gate a rank-`gate_rank` projection
    (0: full `dim x dim`): a full gate would add `dim^2` parameters per layer (+6% on B)
    and break the parameter match with LlamaGen, a rank-64 one adds about 1%. A rank
    of `dim` or more limits nothing (a `dim x dim` matrix has no higher rank), so such a
    gate is built full (`gate_factor_rank` 0): the default 64 on a small test model would
    otherwise factor it into two matrices larger than the full one.
    """

    vocab_size: int = 16384
    num_classes: int = 1000
    grid: tuple[int, int] = (16, 16)
    num_layers: int = 12
    num_heads: int = 12
    dim: int = 768
    mixer: str = "lasad"
    feature_map: str = "silu"
    gate: str = "sigmoid"
    gate_rank: int = 64
    pos_encoding: str = "rope2d"
    rope_base: float = 10000.0
    norm_eps: float = 1e-5
    dtype: str = "float32"
    impl: str = "auto"
    chunk_size: int | None = None
    # Storage of the linear mixers' decoding states (the column states of `lasad`); the
    # steps compute in float32 either way. bfloat16 halves the state bytes a token moves,
    # at about 5e-3 of the largest output (docs/decoding.md, "State dtype").
    decode_state_dtype: str = "float32"
    # The `lasad` decoding step (ops.DECODE_IMPLS): "xla", the fused GPU kernel "pallas",
    # or "auto" (ops.select_decode_impl: what was measured faster).
    decode_impl: str = "auto"
    # Activation checkpointing per block (`REMAT`): memory for recomputation in training.
    remat: str = "none"

    num_prefix: int = dataclasses.field(default=1, init=False)

    @property
    def gate_factor_rank(self) -> int:
        """The rank of the gate's two factors; 0 for one full `dim x dim` matrix (asked
        for with `gate_rank=0`, or a `gate_rank` of at least `dim`)."""
        return self.gate_rank if self.gate_rank < self.dim else 0

    @property
    def head_dim(self) -> int:
        return self.dim // self.num_heads

    @property
    def num_tokens(self) -> int:
        return self.grid[0] * self.grid[1]

    @property
    def mlp_hidden(self) -> int:
        """SwiGLU width: 2/3 of 4*dim, rounded up to a multiple of 256 (LlamaGen)."""
        hidden = int(2 * 4 * self.dim / 3)
        return -(-hidden // 256) * 256

    def __post_init__(self) -> None:
        # A grid given as a list (from Python callers, or JSON) is stored as a tuple: the
        # config is hashed (jit's static arguments, `generate`'s cache), and a list is not
        # hashable.
        if isinstance(self.grid, list):
            object.__setattr__(self, "grid", tuple(self.grid))
        # Every problem is collected and raised together (lasad_jax.validation).
        p = Problems("model")
        sizes = all([p.positive_int(name, getattr(self, name))
                     for name in ("vocab_size", "num_classes", "num_layers", "num_heads", "dim")])
        p.check(isinstance(self.grid, (tuple, list)) and len(self.grid) == 2
                and all(is_int(g) and g >= 1 for g in self.grid), "grid",
                f"must be two positive ints (rows, cols), got {self.grid!r}")
        p.number("rope_base", self.rope_base, low=0.0, low_open=True)
        p.number("norm_eps", self.norm_eps, low=0.0, low_open=True)
        p.check(self.chunk_size is None or (is_int(self.chunk_size) and self.chunk_size >= 1),
                "chunk_size", f"must be None or a positive int, got {self.chunk_size!r}")
        p.one_of("mixer", self.mixer, MIXERS)
        p.one_of("feature_map", self.feature_map, FEATURE_MAPS)
        p.one_of("gate", self.gate, GATES)
        p.one_of("pos_encoding", self.pos_encoding, POS_ENCODINGS)
        p.one_of("dtype", self.dtype, DTYPES)
        p.one_of("decode_state_dtype", self.decode_state_dtype, DTYPES)
        p.one_of("decode_impl", self.decode_impl, ops.DECODE_IMPLS)
        p.check(self.decode_impl != "pallas" or self.mixer == "lasad", "decode_impl",
                f"='pallas' has a kernel for mixer 'lasad' only, got mixer {self.mixer!r}; "
                "use 'auto'")
        p.one_of("impl", self.impl, ops.IMPLS)
        p.one_of("remat", self.remat, REMAT)
        p.check(self.impl != "pallas" or self.mixer == "lasad", "impl",
                f"='pallas' has kernels for mixer 'lasad' only, got mixer {self.mixer!r}; "
                "use 'auto'")
        if sizes and p.check(self.dim % self.num_heads == 0, "dim",
                             f"({self.dim}) must be divisible by model.num_heads "
                             f"({self.num_heads})"):
            uses_rope = self.mixer == "softmax" or self.pos_encoding == "rope2d"
            p.check(not uses_rope or self.head_dim % 4 == 0, "dim",
                    f"/ num_heads = {self.head_dim}, but 2D RoPE needs a head dim divisible "
                    "by 4. Change model.dim or model.num_heads.")
        p.check(is_int(self.gate_rank) and self.gate_rank >= 0, "gate_rank",
                f"must be an int >= 0 (0: full rank), got {self.gate_rank!r}")
        p.raise_if_any()

    @classmethod
    def from_config(cls, cfg: Any, *, vocab_size: int, grid: tuple[int, int],
                    num_classes: int) -> "ModelConfig":
        """Builds from a `model` ConfigDict; a `preset` name fills layers, heads and dim
        where those fields are None.

        A field that is set wins over the preset, so `preset="L", num_layers=2` is a
        2-layer model of L's width: a deliberate partial override. A preset whose three
        fields are all set would change nothing, which is almost always a preset given
        on the command line to a config that sizes its model itself (configs/demo.py):
        that is refused, naming the fields to clear, rather than silently ignored.

        Vocabulary, grid and class count come from the tokenizer and the dataset, so a
        config cannot disagree with the data it trains on.
        """
        fields = dict(cfg)
        preset = fields.pop("preset", None)
        if preset:
            if preset not in PRESETS:
                raise ValueError(f"model.preset must be one of {tuple(PRESETS)}, got {preset!r}")
            sized = {name: fields.get(name) for name in PRESET_FIELDS}
            if all(value is not None for value in sized.values()):
                given = ", ".join(f"{name}={value}" for name, value in sized.items())
                clear = " ".join(f"--config.model.{name}=None" for name in sized)
                raise ValueError(f"model.preset={preset!r} would change nothing: the config "
                                 f"already sets {given}; clear them ({clear}) to use the "
                                 "preset, or drop the preset (--config.model.preset=)")
            for name, value in zip(PRESET_FIELDS, PRESETS[preset]):
                if sized[name] is None:
                    fields[name] = value
        fields = {k: v for k, v in fields.items() if v is not None or k == "chunk_size"}
        known = {f.name for f in dataclasses.fields(cls) if f.init}
        unknown = set(fields) - known
        if unknown:
            raise ValueError(f"unknown model fields {sorted(unknown)}; valid: {sorted(known)}")
        fields.update(vocab_size=vocab_size, grid=tuple(grid), num_classes=num_classes)
        return cls(**fields)
