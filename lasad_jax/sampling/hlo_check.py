"""Reads a compiled sampler for the two ways XLA can make decoding slow without a sound.

A decoding cache is large (gigabytes at sampling batch sizes) and a token changes one
column of it. If the loop body of the compiled `lax.scan` copies a cache array, or builds
a new one, every token moves the whole cache, and the time per token grows with the cache
instead of staying at one column's worth. Two patterns did this here (docs/decoding.md):

* a `conditional` (from `lax.cond` / `lax.switch`) whose operands include a cache array:
  XLA copies the operand into the branch's buffers at every iteration;
* an instruction in the loop body that produces a whole cache array other than an
  in-place `dynamic-update-slice`: a `copy` (XLA inserts one when an update cannot be done
  in place, e.g. because the old buffer is read after the update) or any other op that
  writes a fresh buffer of that size.

`loop_problems` checks the optimized HLO text (`jax.jit(f).lower(...).compile().as_text()`)
for both, inside every `while` loop that carries a guarded array.

A TPU program has a third kind of whole-array transfer, which is not a copy in HBM: the
memory-space assignment moves arrays between HBM and the chip's own memories (VMEM,
`S(1)` in a layout; v4's CMEM, `S(3)`) with asynchronous `copy-start`/`copy-done` pairs,
and moving an array in is how the chip reads it from there. For an array no larger than
one column state (`movable`: the LASAD rings of raw keys and values) such a move costs at
most the bytes the token spends on its column anyway, so it is reported by `check_loops`
rather than counted as a problem; moving anything larger is one. `sampler_problems`
compiles `lasad_jax.sampling.generate`'s program for a model on the default backend and
checks it against the model's cache. XLA's GPU pipeline inserts copies the CPU pipeline
does not, so run it on each platform that samples (`benchmarks/sampling.py --hlo_check`).
Imports only jax, flax and this package (runs on the bare GPU image).
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Any, NamedTuple

import jax

# Ops that name or reinterpret a buffer without writing one.
_NO_BUFFER = {"parameter", "get-tuple-element", "tuple", "bitcast", "while", "conditional",
              "call", "constant", "after-all", "opt-barrier", "optimization-barrier"}
_ARRAY = re.compile(r"\b(pred|[suf]\d+|bf16|f8\w*|c\d+)\[([\d,]*)\]")
_LAID_OUT = re.compile(r"\b(?:pred|[suf]\d+|bf16|f8\w*|c\d+)\[[\d,]*\](?:\{[^{}]*\})?")
_ITEMSIZE = {"pred": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "f16": 2, "bf16": 2, "s32": 4,
             "u32": 4, "f32": 4, "s64": 8, "u64": 8, "f64": 8, "c64": 8, "c128": 16}
_HEADER = re.compile(r"^(?:ENTRY\s+)?%?([\w.\-]+)\s*\(.*\{\s*$")
_INSTR = re.compile(r"^\s*(?:ROOT\s+)?%([\w.\-]+)\s*=\s*(.*)$")


@dataclasses.dataclass
class Instr:
    name: str
    shape: str  # result shape text, a tuple for multi-output ops
    op: str
    operands: list[str]
    attrs: str
    root: bool


def arrays(shape: str) -> list[tuple[str, tuple[int, ...]]]:
    """(dtype, dims) of every array in a shape text, tuple elements in order."""
    return [(d, tuple(int(x) for x in dims.split(",") if x)) for d, dims in _ARRAY.findall(shape)]


def nbytes(shape: str) -> int:
    """Bytes of every array in a shape text (tuple elements summed)."""
    return sum(_ITEMSIZE.get(dtype, 4) * math.prod(dims) for dtype, dims in arrays(shape))


def _elements(shape: str) -> list[str]:
    """The top-level elements of a tuple shape text; `[shape]` for an array."""
    if not shape.startswith("("):
        return [shape]
    parts, depth, start = [], 0, 1
    for i, ch in enumerate(shape):
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        if (ch == "," and depth == 1) or (ch == ")" and depth == 0):
            parts.append(shape[start:i].strip())
            start = i + 1
    return [p for p in parts if p]


def _space(array: str) -> int:
    """The memory space of an array's shape text: `n` of `S(n)` in its layout, 0 (HBM)
    when it names none."""
    m = re.search(r"\{[^{}]*?S\((\d+)\)", array)
    return int(m.group(1)) if m else 0


def _split_instr(name: str, rest: str, root: bool) -> Instr | None:
    """`SHAPE OP(OPERANDS), ATTRS` -> Instr; the shape may be a tuple with spaces."""
    depth, i = 0, 0
    while i < len(rest):  # the shape ends at the first space outside brackets
        ch = rest[i]
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        elif ch == " " and depth == 0:
            break
        i += 1
    shape, tail = rest[:i], rest[i + 1:]
    m = re.match(r"([\w\-]+)\(", tail)
    if not m:
        return None
    op, j, depth = m.group(1), m.end(), 1
    start = j
    while j < len(tail) and depth:
        depth += {"(": 1, ")": -1}.get(tail[j], 0)
        j += 1
    operands = re.findall(r"%([\w.\-]+)", tail[start:j - 1])
    return Instr(name, shape, op, operands, tail[j:], root)


def parse_hlo(text: str) -> dict[str, list[Instr]]:
    """Computation name -> its instructions, from `Compiled.as_text()`."""
    comps: dict[str, list[Instr]] = {}
    current = None
    for line in text.splitlines():
        if current is None:
            m = _HEADER.match(line)
            if m:
                current = comps.setdefault(m.group(1), [])
            continue
        if line.strip() == "}":
            current = None
            continue
        m = _INSTR.match(line)
        if m:
            instr = _split_instr(m.group(1), m.group(2), line.lstrip().startswith("ROOT"))
            if instr:
                current.append(instr)
    return comps


def called(instr: Instr, key: str) -> list[str]:
    """The computations an instruction names under `key` (`body`, `calls`, ...)."""
    m = re.search(key + r"=\{?([^}]*?)\}?(?:,\s*[\w\-]+=|$)", instr.attrs)
    return re.findall(r"%([\w.\-]+)", m.group(1)) if m else []


def _writes_in_place(fused: list[Instr], index: int | None) -> bool:
    """Whether a fusion's output (tuple element `index`) is a dynamic-update-slice."""
    by_name = {i.name: i for i in fused}
    node = next((i for i in fused if i.root), None)
    if node is not None and node.op == "tuple" and index is not None:
        node = by_name.get(node.operands[index])
    while node is not None and node.op == "bitcast":
        node = by_name.get(node.operands[0])
    return node is not None and node.op == "dynamic-update-slice"


@dataclasses.dataclass
class Move:
    """A whole guarded array moved between memory spaces (HBM and on-chip) in a loop."""

    name: str  # the guarded array(s) of that shape
    shape: str  # the array moved, e.g. "bf16[33,16,16,64]"
    nbytes: int
    into_chip: bool  # HBM -> on-chip memory (False: back out to HBM)


class LoopCheck(NamedTuple):
    problems: list[str]  # what `loop_problems` returns
    moves: list[Move]  # moves between HBM and on-chip memory of arrays up to `movable`


def check_loops(hlo_text: str, guarded: dict[str, tuple[int, ...]], *,
                movable: int) -> LoopCheck:
    """`loop_problems`, and the moves of whole guarded arrays of at most `movable`
    elements between HBM and on-chip memory, one per transfer (a `copy-start` or `copy`)
    in a loop body: the TPU memory-space assignment's (module docstring); GPU and CPU
    programs have none."""
    names: dict[tuple[int, ...], str] = {}
    for name, shape in guarded.items():
        key = tuple(sorted(shape))
        names[key] = f"{names[key]} / {name}" if key in names else name
    comps = parse_hlo(hlo_text)

    def hits(shape: str) -> list[tuple[int, tuple[int, ...]]]:
        keys = [tuple(sorted(dims)) for _, dims in arrays(shape)]
        return [(i, k) for i, k in enumerate(keys) if k in names]

    loops = [i for instrs in comps.values() for i in instrs if i.op == "while" and hits(i.shape)]
    problems: list[str] = []
    moves: list[Move] = []
    seen: set[str] = set()
    for loop in loops:
        stack = called(loop, "body")
        while stack:  # the body and what it runs (nested loops, branches, calls)
            comp = stack.pop()
            if comp in seen or comp not in comps:
                continue
            seen.add(comp)
            symbols = {i.name: i.shape for i in comps[comp]}
            for instr in comps[comp]:
                read = {k for op in instr.operands for _, k in hits(symbols.get(op, ""))}
                if instr.op == "while":
                    stack += called(instr, "body") + called(instr, "condition")
                elif instr.op == "conditional":
                    stack += (called(instr, "branch_computations")
                              + called(instr, "true_computation")
                              + called(instr, "false_computation"))
                    if read:
                        carried = ", ".join(sorted(names[k] for k in read))
                        problems.append(f"{comp}: conditional %{instr.name} passes {carried} "
                                        f"through a branch")
                elif instr.op == "call":
                    stack += called(instr, "to_apply")
                if (instr.op in _NO_BUFFER or instr.op == "dynamic-update-slice"
                        or instr.op.endswith("-done")):  # a `-done` ends what its start began
                    continue
                # An asynchronous start's shape is (its operands, its result, context):
                # only the result is a new buffer.
                written, source = instr.shape, None
                if instr.op.endswith("-start"):
                    parts = _elements(instr.shape)
                    source, written = parts[0], (parts[1] if len(parts) > 1 else "")
                elif instr.op == "copy" and instr.operands:
                    source = symbols.get(instr.operands[0], "")
                for index, key in hits(written):
                    if key not in read:
                        continue
                    if instr.op == "fusion":
                        fused = comps.get(next(iter(called(instr, "calls")), ""), [])
                        tuple_out = instr.shape.startswith("(")
                        if _writes_in_place(fused, index if tuple_out else None):
                            continue
                    array = _LAID_OUT.findall(written)[index]
                    shape = array.split("{")[0]  # without its layout
                    origin = _LAID_OUT.findall(source or "")
                    moved = bool(origin) and _space(origin[0]) != _space(array)
                    if moved and math.prod(key) <= movable:
                        moves.append(Move(names[key], shape, nbytes(shape),
                                          into_chip=_space(array) != 0))
                        continue
                    what = "copies" if instr.op.startswith("copy") else f"{instr.op} rewrites"
                    problems.append(f"{comp}: %{instr.name} {what} a whole {names[key]} "
                                    f"({shape}) inside the loop")
    return LoopCheck(problems, moves)


def loop_problems(hlo_text: str, guarded: dict[str, tuple[int, ...]], *,
                  movable: int = 0) -> list[str]:
    """Problems in the loops of a compiled program that carry a guarded array.

    `guarded`: a name for the message -> shape of each array that must never be copied or
    rebuilt in a loop body. An instruction rebuilds a guarded array when it reads an array
    with that array's dims and writes one with the same dims, in any order and dtype (a
    copy, a transpose, a conversion to float32, a rebuilt stack) other than by an in-place
    `dynamic-update-slice`. A copy that also reshapes would escape; those XLA inserts for
    updates that cannot be done in place keep the shape. A move between memory spaces of
    an array of at most `movable` elements is not a problem (`check_loops` lists them; the
    module docstring says why). Returns one line per problem (empty: the loops update the
    guarded arrays in place only).
    """
    return check_loops(hlo_text, guarded, movable=movable).problems


def guarded_arrays(cache: Any, batch_axes: Any, column: int) -> dict[str, tuple[int, ...]]:
    """The arrays of a decoding cache (arrays or `ShapeDtypeStruct`s) that must be updated
    in place: those larger than one column. An array whose batch axis is not its first
    leads with a slot axis, one slot written per token, so it is guarded when it has more
    than one slot; any other array when it has more than `column` elements (one
    `Dk x Dv` state for every row and head: what each step may rewrite whole). So a
    softmax KV cache (`[B H, slots, D]`, the batch first) of at most `D` slots is not
    guarded: a copy of it per token moves no more than the column a LASAD token rewrites,
    which the per-token budget allows (issue 17); the presets' grids have 256 slots and
    more, where it is guarded."""
    guarded = {}
    leaves = jax.tree_util.tree_flatten_with_path(cache)[0]
    for (path, x), axis in zip(leaves, jax.tree.leaves(batch_axes)):
        slotted = axis > 0 and x.shape[0] > 1
        if slotted or math.prod(x.shape) > column:
            guarded[f"cache{jax.tree_util.keystr(path)}"] = tuple(x.shape)
    return guarded


def sampler_problems(model: Any, batch: int, *, cfg_scale: float = 2.0,
                     compiler_options: dict | None = None) -> tuple[list[str], str]:
    """Compiles `generate`'s program for `model` and `batch` labels on the default backend
    (nothing runs) and returns (`loop_problems` of its cache, the HLO text).
    `compiler_options`: XLA options for this compile (`Lowered.compile`), for a caller
    whose process runs a pipeline other than the one it wants to check."""
    from flax import nnx
    import jax.numpy as jnp

    from lasad_jax.sampling.generate import _generate, cache_batch_axes

    cfg = model.cfg
    rows = batch * (2 if cfg_scale != 1.0 else 1)
    graphdef, params = nnx.split(model)
    labels = jnp.zeros((batch,), jnp.int32)
    text = _generate.lower(graphdef, params, labels, jax.random.key(0), cfg_scale=cfg_scale,
                           temperature=1.0, top_k=0, top_p=1.0).compile(compiler_options).as_text()
    cache = jax.eval_shape(lambda: model.init_cache(rows))
    axes = cache_batch_axes(model.init_cache, rows)
    column = rows * cfg.num_heads * cfg.head_dim * cfg.head_dim
    return loop_problems(text, guarded_arrays(cache, axes, column), movable=column), text
